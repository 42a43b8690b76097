"""`model-runner check`: try a submission as the host would, without a client or a network.

    model-runner check --code-directory DIR --base-class pkg.module.Class
        [--init-args JSON] [--call METHOD [--args JSON]]

It lists what it finds and every problem with its fix: files that do not compile (file:line),
`requirements.txt` entries that are not installed, modules that fail to import or are shadowed,
no subclass of the base class, a constructor that raises; with --call it calls a method through
the host's own model core (`model.ModelCore`, what the gRPC service drives) and prints the
answer as the client decodes it. Exit 0 only when a model would set up (and the call, if asked,
succeeded); 1 otherwise; 2 for bad options. It needs the host alone, not the client.

`static_findings` (what needs no user code to run: syntax, requirements) is also what the host
logs when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .arguments import Arguments

__all__ = ["main", "static_findings"]

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def static_findings(code_directory: Path) -> list[str]:
    """Problems found without running the submission's code, each with its fix."""
    from .discovery import submission_modules

    problems = []
    root = code_directory.resolve()
    for name in submission_modules(code_directory):
        parts = name.split(".")
        path = root.joinpath(*parts).with_suffix(".py")
        if not path.is_file():
            path = root.joinpath(*parts, "__init__.py")
        try:
            compile(path.read_bytes(), str(path), "exec")
        except SyntaxError as exc:
            problems.append(f"{exc.filename}:{exc.lineno}: {exc.msg}; fix the syntax error "
                            f"(module {name} cannot be imported)")
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: cannot be read ({exc})")
    requirements = root / "requirements.txt"
    if requirements.is_file():
        missing = []
        for line in requirements.read_text(errors="replace").splitlines():
            text = line.split("#", 1)[0].strip()
            if not text or text.startswith("-"):
                continue  # options (-r, --index-url, ...) and comments
            match = _REQUIREMENT.match(text)
            if match is None:
                continue
            try:
                importlib.metadata.distribution(match[1])
            except importlib.metadata.PackageNotFoundError:
                missing.append(match[1])
        if missing:
            problems.append(f"requirements.txt names packages that are not installed: "
                            f"{', '.join(missing)}; install them "
                            f"(pip install -r {requirements})")
    return problems


def _arguments(text: str | None, option: str) -> tuple[list[Any], dict[str, Any]]:
    if not text:
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"model-runner check: error: {option} is not JSON: {exc}") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


def _request_arguments(arguments: tuple[list[Any], dict[str, Any]]) -> Arguments:
    """JSON values as a request's arguments, as a client encodes them."""
    from .wire import encode_value
    from .wire.pb2.commons_pb2 import Argument, KwArgument, Variant

    def variant(value: Any) -> Variant:
        encoded = encode_value(value)
        return Variant(type=cast(Any, int(encoded.type)), value=encoded.value)  # an int enum

    args, kwargs = arguments
    return ([Argument(position=i, data=variant(a)) for i, a in enumerate(args)],
            [KwArgument(keyword=k, data=variant(v)) for k, v in kwargs.items()])


async def _run(code_directory: Path, base_class: str, init: tuple[list[Any], dict[str, Any]],
               method: str | None, call: tuple[list[Any], dict[str, Any]]) -> bool:
    from .discovery import DiscoveryError, discover_class
    from .model import ModelCore
    from .wire import DEFAULT_MAX_MESSAGE_LENGTH, StatusCode, VariantError, decode_value

    try:
        cls = discover_class(code_directory, base_class)
    except DiscoveryError as exc:
        print(f"problem: {exc}")
        return False
    except BaseException as exc:  # the submission's code, at import
        from .containment import describe
        print(f"problem: importing the submission raised {describe(exc)}")
        return False
    print(f"found: {cls.__module__}.{cls.__qualname__} implements {base_class}")
    # The host's own core, as the gRPC service drives it: the same lifecycle, queue and codec.
    model = ModelCore(code_directory, max_send_message_length=DEFAULT_MAX_MESSAGE_LENGTH)
    try:
        setup = await model.setup(base_class, _request_arguments(init), None)
        if setup.code is not StatusCode.SUCCESS:
            print(f"problem: Setup answered {setup.code}: {setup.message}")
            return False
        print(f"set up: {cls.__qualname__}({_shown(init)}) constructed")
        if method is None:
            return True
        answer = await model.call(method, _request_arguments(call), None)
        # What a client reports (model_runner_client.answers.read_call_answer): any code but
        # SUCCESS from a set-up model is a FAILURE, its detail the code and message; a result
        # is decoded as ResultDecoder does without a `returns` type (no methodResponse: None).
        if answer.code is not StatusCode.SUCCESS:
            print(f"problem: {method}({_shown(call)}) -> FAILURE: {answer.code}: "
                  f"{answer.message}")
            return False
        try:
            output = None if answer.variant is None else decode_value(*answer.variant)
        except VariantError as exc:
            print(f"problem: {method}({_shown(call)}) -> FAILURE: unreadable result: {exc}")
            return False
        print(f"called: {method}({_shown(call)}) -> {output!r} "
              f"(as the client decodes it: {type(output).__name__})")
        return True
    finally:
        model.close()


def _shown(arguments: tuple[list[Any], dict[str, Any]]) -> str:
    args, kwargs = arguments
    return ", ".join([*(json.dumps(a) for a in args),
                      *(f"{k}={json.dumps(v)}" for k, v in kwargs.items())])


def main(argv: Sequence[str] | None = None) -> None:
    import os

    parser = argparse.ArgumentParser(
        prog="model-runner check",
        description="Try a submission as the model host would: find its class, construct it, "
                    "optionally call a method; list every problem with its fix. Exit 0 only "
                    "when a model would set up.")
    parser.add_argument("--code-directory", default=os.environ.get("CODE_DIRECTORY") or ".",
                        help="the submission's code folder (env CODE_DIRECTORY; default .)")
    parser.add_argument("--base-class", required=True,
                        help="the Crunch's base class, as a full dotted path, e.g. "
                             "starter_challenge.tracker.TrackerBase (its package must be "
                             "installed or on PYTHONPATH)")
    parser.add_argument("--init-args", help="constructor arguments as JSON: a list "
                                            "(positional) or an object (keywords)")
    parser.add_argument("--call", metavar="METHOD", help="a method to call once set up")
    parser.add_argument("--args", help="the call's arguments as JSON: a list (positional) or "
                                       "an object (keywords)")
    options = parser.parse_args(argv)
    code = Path(options.code_directory)
    if not code.is_dir():
        parser.exit(2, f"model-runner check: error: --code-directory {str(code)!r} is not a "
                       "folder\n")
    init = _arguments(options.init_args, "--init-args")
    call = _arguments(options.args, "--args")
    import logging
    logging.basicConfig(level=logging.CRITICAL)  # findings are printed, not logged
    from .containment import install
    install()  # os._exit in the submission is refused, as in the host
    print(f"checking {code.resolve()} against {options.base_class}")
    problems = static_findings(code)
    for problem in problems:
        print(f"problem: {problem}")
    ok = asyncio.run(_run(code, options.base_class, init, options.call, call))
    verdict = "a model would set up" if ok else "no model would set up"
    if ok and problems:
        verdict += f", with {len(problems)} problem(s) above to fix"
    print(f"result: {verdict}")
    sys.stdout.flush()
    from .containment import exit_process
    exit_process(0 if ok else 1)  # threads the submission started must not hold the exit
