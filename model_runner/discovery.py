"""Find the submission's class that implements the coordinator's base class.

The base class is named by its full dotted path and may come from an installed package or from
the submission folder itself. Every module under the code directory is imported, in sorted path
order (a module that fails to import is recorded and skipped); the first concrete class that
subclasses the base, is not the base, and is not defined inside the base's own top-level package
wins. This runs the submission's code: call it off the event loop.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from .containment import describe
from .wire.codes import unimportable_base

__all__ = ["DiscoveryError", "ImportFailure", "discover_class", "submission_modules",
           "unload_submission"]

logger = logging.getLogger(__name__)

# Folders that hold no submission code (virtual environments, caches, VCS metadata).
_SKIPPED_DIRS = {"__pycache__", "site-packages", "node_modules", "venv", ".venv", "env"}


@dataclass(frozen=True)
class ImportFailure:
    module: str
    error: str


class DiscoveryError(Exception):
    """No usable class: the message says what was searched and what to fix."""

    def __init__(self, message: str, *, base_importable: bool = True) -> None:
        super().__init__(message)
        self.base_importable = base_importable


@dataclass
class DiscoveryReport:
    failures: list[ImportFailure] = field(default_factory=list)
    considered: list[str] = field(default_factory=list)


def submission_modules(code_directory: Path) -> list[str]:
    """Dotted names of the importable `.py` modules under the code directory, sorted by path."""
    names: list[str] = []
    root = code_directory.resolve()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.parts
        if any(p in _SKIPPED_DIRS or p.startswith(".") for p in parts[:-1]):
            continue
        if not all(p.isidentifier() for p in (*parts[:-1], relative.stem)):
            continue  # not importable by name (e.g. "my-model.py", "setup (1).py")
        if relative.stem == "__init__":
            if len(parts) == 1:
                continue  # a top-level __init__.py makes no module of its own
            names.append(".".join(parts[:-1]))
        else:
            names.append(".".join((*parts[:-1], relative.stem)))
    return names


def _add_to_path(code_directory: Path) -> None:
    entry = str(code_directory.resolve())
    if entry not in sys.path:
        # First, so that the submission's own modules win over same-named installed ones.
        sys.path.insert(0, entry)


def _import_base(class_name: str) -> type:
    module_name, _, attr = class_name.rpartition(".")
    if not module_name or not attr:
        raise DiscoveryError(
            f"base class {class_name!r} is not a full dotted path; "
            "name it as package.module.ClassName",
            base_importable=False,
        )
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # user code may raise anything: SystemExit, KeyboardInterrupt
        raise DiscoveryError(
            unimportable_base(class_name, f"module {module_name!r} failed with "
                              f"{describe(exc)}; install the Crunch's package or ship the "
                              "module in the submission"),
            base_importable=False,
        ) from None
    base = getattr(module, attr, None)
    if not isinstance(base, type):
        raise DiscoveryError(
            unimportable_base(class_name, f"module {module_name!r} has no class {attr!r}"),
            base_importable=False,
        )
    return base


def _shadowing(name: str, root: Path) -> str | None:
    """Where the module the name `name` already stands for comes from, when that is not the
    submission: importing the submission's file of that name would only return it."""
    top = name.partition(".")[0]
    loaded = sys.modules.get(top)
    if loaded is None:
        return None
    paths = [getattr(loaded, "__file__", None), *list(getattr(loaded, "__path__", None) or [])]
    if any(p and str(Path(p).resolve()).startswith(str(root) + "/") for p in paths):
        return None  # the submission's own, imported earlier
    origin = getattr(loaded, "__file__", None)
    return origin or "built into Python"


def _import_all(names: list[str], root: Path, report: DiscoveryReport) -> list[ModuleType]:
    modules = []
    for name in names:
        shadow = _shadowing(name, root)
        if shadow is not None:
            top = name.partition(".")[0]
            error = (f"not imported: the name {top!r} already stands for a module the host "
                     f"loaded ({shadow}), so the submission's {top} is never seen; rename it "
                     "(and the imports of it) to a name of your own, e.g. my_" + top)
            report.failures.append(ImportFailure(name, error))
            logger.warning("skipping module %s: %s", name, error)
            continue
        try:
            modules.append(importlib.import_module(name))
        except BaseException as exc:  # user code: SystemExit, KeyboardInterrupt, os._exit too
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
            report.failures.append(ImportFailure(name, f"{describe(exc)}{where}"))
            logger.warning("skipping module %s: it failed to import: %s", name, describe(exc))
    return modules


def discover_class(code_directory: Path, class_name: str) -> type:
    """Import the submission and return the first class implementing `class_name`."""
    _add_to_path(code_directory)
    base = _import_base(class_name)
    base_package = base.__module__.partition(".")[0]
    report = DiscoveryReport()
    root = code_directory.resolve()
    for module in _import_all(submission_modules(code_directory), root, report):
        for obj in list(vars(module).values()):
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue  # not a class, or imported from elsewhere (seen where it is defined)
            report.considered.append(f"{obj.__module__}.{obj.__qualname__}")
            if obj is base or not issubclass(obj, base):
                continue
            if obj.__module__.partition(".")[0] == base_package:
                continue  # the Crunch's own helpers or bundled examples, not the submission
            if inspect.isabstract(obj):
                continue
            logger.info("found %s.%s implementing %s", obj.__module__, obj.__qualname__,
                        class_name)
            return obj
    raise DiscoveryError(_not_found_message(code_directory, class_name, report))


def _not_found_message(code_directory: Path, class_name: str, report: DiscoveryReport) -> str:
    parts = [f"no class in {code_directory} subclasses {class_name}"]
    if report.failures:
        parts.append("modules that failed to import: " + "; ".join(
            f"{f.module}: {f.error}" for f in report.failures))
    considered = report.considered
    if considered:
        shown = ", ".join(considered[:50])
        more = f" and {len(considered) - 50} more" if len(considered) > 50 else ""
        parts.append(f"classes considered: {shown}{more}")
    else:
        parts.append("no classes were found in the submission")
    parts.append(f"define a concrete class that inherits from {class_name}")
    return "; ".join(parts)


def unload_submission(code_directory: Path) -> int:
    """Forget every module imported from the code directory, so a new Setup imports it afresh."""
    root = str(code_directory.resolve())
    dropped = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()).startswith(root + "/"):
            del sys.modules[name]
            dropped += 1
    importlib.invalidate_caches()
    return dropped
