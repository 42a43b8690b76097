"""`python -m model_runner` / `model-runner`: serve one submission over gRPC.

Options follow the conventions of existing deployments; each has an environment variable.
Bad options exit non-zero with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from . import containment, eventloop
from .check import static_findings
from .host import (
    DEFAULT_MAX_MESSAGE_LENGTH,
    ConnectionLimits,
    HostConfig,
    ModelHost,
    call_guard,
)
from .security import DelegationClaims, DelegationHeaders, server_tls_context
from .wire.auth import AuthError

__all__ = ["main", "parse_address"]

logger = logging.getLogger("model_runner")

DEFAULT_CODE_DIRECTORY = "/workspace/submission/code"
DEFAULT_ADDRESS = "[::]:50051"


class UsageError(Exception):
    """A bad option: its message is printed as one line."""


def parse_address(address: str) -> tuple[str | None, int, str | None]:
    """`host:port`, `[v6]:port`, `:port` or `unix:PATH` → (host, port, unix path)."""
    text = address.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise UsageError(
                f"--address {address!r}: unix: needs a socket path, e.g. unix:/tmp/m.sock")
        return None, 0, path
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(
            f"--address {address!r} is not HOST:PORT with a port from 0 to 65535 "
            "(examples: [::]:50051, 127.0.0.1:50051, unix:/tmp/model.sock)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif any(c in host for c in ":[]"):
        raise UsageError(f"--address {address!r}: write IPv6 hosts in brackets, e.g. [::1]:50051")
    return (host or None), int(port_text), None


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} {value!r} is not a whole number of bytes") from None
    if number <= 0:
        raise UsageError(f"{name} must be a positive number of bytes, got {number}")
    return number


def _positive(name: str, value: str, kind: type[int] | type[float] = float) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"{name} {value!r} is not a {'whole ' if kind is int else ''}number")\
            from None
    if number <= 0:
        raise UsageError(f"{name} must be positive, got {number}")
    return number


#: The words click (crunch-model-runner's CLI library) takes as booleans, in any case.
_TRUE_WORDS = {"1", "true", "t", "yes", "y", "on"}
_FALSE_WORDS = {"0", "false", "f", "no", "n", "off"}


def _boolean(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise UsageError(f"{name} {value!r} is not a boolean: use true or false "
                     "(also 1/0, yes/no, on/off)")


def _env(*names: str, default: str | None = None) -> str | None:
    """The first of `names` set in the environment (the deployed name first, then aliases).

    An empty value counts as unset, as in click: the orchestrator sets every variable, with an
    empty string for what it does not know."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


def _parser() -> argparse.ArgumentParser:
    def env(name: str, default: str | None = None) -> str | None:
        return _env(name, default=default)

    parser = argparse.ArgumentParser(
        prog="model-runner",
        description="Serve a submitted model over gRPC (dynamic_subclass.DynamicSubclassService "
                    "and grpc.health.v1.Health).",
    )
    parser.add_argument("--code-directory", default=env("CODE_DIRECTORY", DEFAULT_CODE_DIRECTORY),
                        help="the submission's code folder (env CODE_DIRECTORY; default "
                             "%(default)s)")
    parser.add_argument("--address", default=env("GRPC_ADDRESS", DEFAULT_ADDRESS),
                        help="where to listen: HOST:PORT, [IPv6]:PORT or unix:PATH "
                             "(env GRPC_ADDRESS; default %(default)s)")
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"),
                        help="debug, info, warning, error or critical, in any case "
                             "(env LOG_LEVEL; default %(default)s)")
    default_length = str(DEFAULT_MAX_MESSAGE_LENGTH)
    parser.add_argument("--max-receive-message-length",
                        default=_env("GRPC_MAX_RECEIVE_MESSAGE_LENGTH",
                                     "MAX_RECEIVE_MESSAGE_LENGTH", default=default_length),
                        help="largest request in bytes; larger ones get RESOURCE_EXHAUSTED "
                             "(env GRPC_MAX_RECEIVE_MESSAGE_LENGTH or MAX_RECEIVE_MESSAGE_LENGTH; "
                             "default %(default)s)")
    parser.add_argument("--max-send-message-length",
                        default=_env("GRPC_MAX_SEND_MESSAGE_LENGTH", "MAX_SEND_MESSAGE_LENGTH",
                                     default=default_length),
                        help="largest response in bytes; a larger result is MODEL_FAILED "
                             "(env GRPC_MAX_SEND_MESSAGE_LENGTH or MAX_SEND_MESSAGE_LENGTH; "
                             "default %(default)s)")
    parser.add_argument("--resource-directory",
                        default=env("RESOURCE_DIRECTORY", "/workspace/resources"),
                        help="accepted for compatibility with existing deployments "
                             "(env RESOURCE_DIRECTORY; default %(default)s)")
    parser.add_argument("--has-gpu", default=env("HAS_GPU", "false"),
                        help="whether a GPU is available: true/false, 1/0, yes/no, any case; "
                             "logged, changes nothing, as in crunch-model-runner (env HAS_GPU; "
                             "default %(default)s)")
    parser.add_argument("--main-file", default=env("MAIN_FILE", "main.py"),
                        help="the submission's main file; logged, changes nothing (every module "
                             "is searched), as in crunch-model-runner (env MAIN_FILE; default "
                             "%(default)s)")
    parser.add_argument("--tls-cert", default=env("TLS_CERT"),
                        help="serve TLS with this certificate (PEM; env TLS_CERT)")
    parser.add_argument("--tls-key", default=env("TLS_KEY"),
                        help="the certificate's private key (PEM; env TLS_KEY)")
    parser.add_argument("--tls-client-ca", default=env("TLS_CLIENT_CA"),
                        help="require client certificates signed by this CA: mutual TLS "
                             "(PEM; env TLS_CLIENT_CA)")
    parser.add_argument("--auth-token", default=env("AUTH_TOKEN"),
                        help="require 'authorization: Bearer <token>' on model calls; prefer "
                             "the env AUTH_TOKEN, which other users cannot see in ps")
    parser.add_argument("--auth-delegation", default=env("AUTH_DELEGATION"),
                        help="serve the cruncher's wallet delegation of this host's TLS key in "
                             "response headers (model-runner-client SecureCredentials mode): a "
                             "JSON file {message_b64, signature_b64, wallet_pubkey_b58} as the "
                             "orchestrator's cruncher_msg.json (or the keys without suffixes); "
                             "needs --tls-cert (env AUTH_DELEGATION)")
    parser.add_argument("--gateway-keys", default=env("GATEWAY_KEYS"),
                        help="accept model calls only with a gateway token signed by one of "
                             "these coordinator keys: a file of SHA-256 hashes (hex) of their "
                             "DER public keys, one a line (env GATEWAY_KEYS)")
    parser.add_argument("--gateway-max-age", default=env("GATEWAY_MAX_AGE", "60"),
                        help="seconds a gateway token's timestamp may be off this host's clock "
                             "(env GATEWAY_MAX_AGE; default %(default)s)")
    parser.add_argument("--model-id", default=env("MODEL_ID"),
                        help="this host's model id, which gateway tokens and, with --secure, "
                             "the delegation must name (env MODEL_ID)")
    secure = parser.add_argument_group(
        "deployed secure mode",
        "The options of the host the Model Orchestrator deploys (crunchdao/model-runner's "
        "secure branch). With --secure the host serves mutual TLS only, with tls.crt, tls.key, "
        "ca.crt (the CA of coordinator certificates) and cruncher_msg.json (the cruncher "
        "wallet's delegation of this host's TLS key) from the certificates directory; it checks "
        "the delegation at start and refuses to start when it fails; and it answers model "
        "calls only from a client certificate whose public key hash is one of the coordinator "
        "cert hashes. Health stays open.")
    secure.add_argument("--secure", default=env("SECURE", "false"),
                        help="serve the deployed secure mode: true/false, 1/0, yes/no, on/off, "
                             "any case (env SECURE; default %(default)s)")
    secure.add_argument("--certificates-directory",
                        default=env("CERTIFICATES_DIRECTORY", "/workspace/certificates"),
                        help="where --secure reads tls.crt, tls.key, ca.crt and "
                             "cruncher_msg.json (env CERTIFICATES_DIRECTORY; default "
                             "%(default)s)")
    secure.add_argument("--cruncher-wallet-pubkey", default=env("CRUNCHER_WALLET_PUBKEY"),
                        help="the cruncher's wallet (base58), which must have signed the "
                             "delegation (env CRUNCHER_WALLET_PUBKEY)")
    secure.add_argument("--cruncher-hotkey", default=env("CRUNCHER_HOTKEY"),
                        help="the cruncher's hotkey, which the delegation must name; unset: "
                             "the delegation's hotkey must be null (env CRUNCHER_HOTKEY)")
    secure.add_argument("--coordinator-cert-hash", default=env("COORDINATOR_CERT_HASH"),
                        help="SHA-256 (hex) of the coordinator's client-certificate public key "
                             "(DER SubjectPublicKeyInfo) whose model calls are answered "
                             "(env COORDINATOR_CERT_HASH)")
    secure.add_argument("--coordinator-cert-hash-secondary",
                        default=env("COORDINATOR_CERT_HASH_SECONDARY"),
                        help="a second accepted hash, for a coordinator rotating its "
                             "certificate (env COORDINATOR_CERT_HASH_SECONDARY)")
    secure.add_argument("--crunch-onchain-address", default=env("CRUNCH_ONCHAIN_ADDRESS"),
                        help="the Crunch's on-chain address; accepted, changes nothing, as in "
                             "the deployed host (env CRUNCH_ONCHAIN_ADDRESS)")
    secure.add_argument("--coordinator-wallet-pubkey", default=env("COORDINATOR_WALLET_PUBKEY"),
                        help="the coordinator's wallet; accepted, changes nothing, as in the "
                             "deployed host (env COORDINATOR_WALLET_PUBKEY)")
    limits = ConnectionLimits()
    parser.add_argument("--max-connections", default=env("MAX_CONNECTIONS",
                                                          str(limits.max_connections)),
                        help="connections open at once; past it one holding answers its peer "
                             "does not let through, else a silent, else an idle one is closed "
                             "(env MAX_CONNECTIONS; default %(default)s)")
    parser.add_argument("--handshake-timeout", default=env("HANDSHAKE_TIMEOUT",
                                                            f"{limits.handshake_timeout:g}"),
                        help="seconds a new connection has for TLS and the HTTP/2 preface "
                             "(env HANDSHAKE_TIMEOUT; default %(default)s)")
    parser.add_argument("--idle-timeout", default=env("IDLE_TIMEOUT",
                                                       f"{limits.idle_timeout:g}"),
                        help="seconds a connection may stay without a call before it is closed "
                             "(env IDLE_TIMEOUT; default %(default)s)")
    parser.add_argument("--max-stalled-streams", default=env(
                            "MAX_STALLED_STREAMS", str(limits.max_stalled_streams)),
                        help="streams on one connection whose answers the peer's flow-control "
                             "window holds back; past it the connection is closed (env "
                             "MAX_STALLED_STREAMS; default %(default)s)")
    parser.add_argument("--stall-timeout", default=env("STALL_TIMEOUT",
                                                        f"{limits.stall_timeout:g}"),
                        help="seconds a connection may hold answers back (a window it does not "
                             "reopen, output it does not read) before it is closed (env "
                             "STALL_TIMEOUT; default %(default)s)")
    parser.add_argument("--max-call-seconds", default=env("MAX_CALL_SECONDS",
                                                           f"{limits.max_call_seconds:g}"),
                        help="the deadline of a call that sends none (env MAX_CALL_SECONDS; "
                             "default %(default)s)")
    parser.add_argument("--grace-period", default=env("GRACE_PERIOD", "10"),
                        help="seconds in-flight calls get to finish after SIGTERM/SIGINT "
                             "(env GRACE_PERIOD; default %(default)s)")
    return parser


def build_config(argv: Sequence[str] | None = None) -> tuple[HostConfig, str]:
    """Parse the command line into a HostConfig and a log level; raises UsageError."""
    options = _parser().parse_args(argv)
    level = str(options.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UsageError(f"--log-level {options.log_level!r} is not one of debug, info, "
                         "warning, error, critical")
    code = Path(options.code_directory)
    if not code.is_dir():
        raise UsageError(f"--code-directory {str(code)!r} does not exist or is not a folder; "
                         "point it at the submission's code")
    if not any(code.rglob("*.py")):
        raise UsageError(f"--code-directory {str(code)!r} holds no Python files; "
                         "point it at the submission's code")
    host, port, path = parse_address(options.address)
    try:
        grace = float(options.grace_period)
    except ValueError:
        raise UsageError(f"--grace-period {options.grace_period!r} is not a number of seconds") \
            from None
    if grace < 0:
        raise UsageError(f"--grace-period must be 0 or more seconds, got {grace}")
    limits = ConnectionLimits(
        max_connections=int(_positive("--max-connections", options.max_connections, int)),
        handshake_timeout=_positive("--handshake-timeout", options.handshake_timeout),
        idle_timeout=_positive("--idle-timeout", options.idle_timeout),
        max_stalled_streams=int(_positive("--max-stalled-streams", options.max_stalled_streams,
                                          int)),
        stall_timeout=_positive("--stall-timeout", options.stall_timeout),
        max_call_seconds=_positive("--max-call-seconds", options.max_call_seconds))
    secure = _boolean("--secure", options.secure)
    claims = None
    tls: tuple[Path | None, Path | None, Path | None]
    delegation: Path | None
    if secure:
        tls, delegation, claims = _secure_mode(options)
    else:
        tls = _tls_paths(options.tls_cert, options.tls_key, options.tls_client_ca)
        delegation = _readable("--auth-delegation", options.auth_delegation)
    cert_hashes = _cert_hashes(options)
    try:
        gateway_max_age = float(options.gateway_max_age)
    except ValueError:
        raise UsageError(f"--gateway-max-age {options.gateway_max_age!r} is not a number of "
                         "seconds") from None
    if gateway_max_age <= 0:
        raise UsageError(f"--gateway-max-age must be positive seconds, got {gateway_max_age}")
    if delegation is not None and tls[0] is None:
        raise UsageError("--auth-delegation vouches for the host's TLS key: give --tls-cert and "
                         "--tls-key (and --tls-client-ca for mutual TLS) too")
    gateway_keys = _readable("--gateway-keys", options.gateway_keys)
    if gateway_keys is not None and not options.model_id:
        raise UsageError("--gateway-keys needs --model-id (env MODEL_ID): gateway tokens name "
                         "the model they are for")
    config = HostConfig(
        code_directory=code,
        host=host,
        port=port,
        path=path,
        max_receive_message_length=_positive_int("--max-receive-message-length",
                                                 options.max_receive_message_length),
        max_send_message_length=_positive_int("--max-send-message-length",
                                              options.max_send_message_length),
        grace_period=grace,
        limits=limits,
        resource_directory=Path(options.resource_directory) if options.resource_directory
        else None,
        tls_cert=tls[0], tls_key=tls[1], tls_client_ca=tls[2],
        auth_token=options.auth_token or None,
        auth_delegation=delegation,
        gateway_keys=gateway_keys,
        gateway_max_age=gateway_max_age,
        model_id=options.model_id or None,
        secure=secure,
        delegation_claims=claims,
        coordinator_cert_hashes=cert_hashes,
        has_gpu=_boolean("--has-gpu", options.has_gpu),
        main_file=options.main_file,
    )
    try:  # the security files, read once here so that a bad one is a one-line error
        call_guard(config)
        if delegation is not None and tls[0] is not None:
            DelegationHeaders(delegation, tls[0], claims)
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    return config, level


#: What --secure reads from the certificates directory.
SECURE_FILES = ("tls.crt", "tls.key", "ca.crt", "cruncher_msg.json")


def _secure_mode(options: argparse.Namespace) -> tuple[
        tuple[Path, Path, Path], Path, DelegationClaims]:
    """The deployed secure mode's files and claims; it never fails open: whatever is missing
    is a UsageError saying what to set."""
    ours = [name for name, value in (("--tls-cert", options.tls_cert),
                                     ("--tls-key", options.tls_key),
                                     ("--tls-client-ca", options.tls_client_ca),
                                     ("--auth-delegation", options.auth_delegation)) if value]
    if ours:
        raise UsageError(f"--secure takes its TLS files and delegation from "
                         f"--certificates-directory; drop {', '.join(ours)} (or drop --secure "
                         "and keep them)")
    folder = Path(options.certificates_directory)
    if not folder.is_dir():
        raise UsageError(f"--secure: the certificates directory {str(folder)!r} does not exist; "
                         "set CERTIFICATES_DIRECTORY (or --certificates-directory) to the folder "
                         f"holding {', '.join(SECURE_FILES)}")
    missing = [name for name in SECURE_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"--secure: {str(folder)!r} has no {', '.join(missing)}; the "
                         f"certificates directory must hold {', '.join(SECURE_FILES)}")
    unset = [what for what, value in (
        ("CRUNCHER_WALLET_PUBKEY (--cruncher-wallet-pubkey)", options.cruncher_wallet_pubkey),
        ("MODEL_ID (--model-id)", options.model_id),
        ("COORDINATOR_CERT_HASH or COORDINATOR_CERT_HASH_SECONDARY (--coordinator-cert-hash)",
         options.coordinator_cert_hash or options.coordinator_cert_hash_secondary)) if not value]
    if unset:
        raise UsageError(f"--secure needs {'; '.join(unset)}: set them, or SECURE=false to "
                         "serve without security")
    tls = _tls_paths(str(folder / "tls.crt"), str(folder / "tls.key"), str(folder / "ca.crt"))
    assert tls[0] is not None and tls[1] is not None and tls[2] is not None
    claims = DelegationClaims(options.cruncher_wallet_pubkey, options.model_id,
                              options.cruncher_hotkey or None)
    return (tls[0], tls[1], tls[2]), folder / "cruncher_msg.json", claims


def _cert_hashes(options: argparse.Namespace) -> tuple[str, ...]:
    hashes = []
    for option, value in (("--coordinator-cert-hash", options.coordinator_cert_hash),
                          ("--coordinator-cert-hash-secondary",
                           options.coordinator_cert_hash_secondary)):
        if not value:
            continue
        text = value.strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise UsageError(f"{option} {value!r} is not a SHA-256 hash in hex (64 characters): "
                             "give the hash of the coordinator certificate's DER public key")
        hashes.append(text)
    return tuple(hashes)


def _readable(option: str, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{option} {value!r} is not a readable file")
    return path


def _tls_paths(cert: str | None, key: str | None,
               client_ca: str | None) -> tuple[Path | None, Path | None, Path | None]:
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together: give both or neither")
    if client_ca and not cert:
        raise UsageError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
    paths = [_readable(option, value) for option, value in
             zip(("--tls-cert", "--tls-key", "--tls-client-ca"), (cert, key, client_ca),
                 strict=True)]
    if paths[0] is not None and paths[1] is not None:
        try:
            server_tls_context(paths[0], paths[1], paths[2])
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UsageError(f"cannot use the TLS files: {exc}") from None
    return paths[0], paths[1], paths[2]


def _raise_file_limit() -> None:
    """Open-file limit to the hard limit (at most 65,536): a soft 1,024 was exhausted by 1,100
    connections that never sent the preface (the handshake timeout then frees them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d: %s", soft, exc)


async def _serve(config: HostConfig) -> None:
    host = ModelHost(config)

    def announce() -> None:
        # Announced whatever the log level: launchers read the bound port from this line.
        logger.log(max(logging.INFO, logger.getEffectiveLevel()),
                   "model host serving %s in %s mode over %s on %s", config.code_directory,
                   "secure" if config.secure else "insecure", host.families, host.address)
        logger.info("has_gpu=%s main_file=%s resource_directory=%s (options of existing "
                    "deployments; they change nothing here)", config.has_gpu, config.main_file,
                    config.resource_directory)
        # Which loop eventloop.run chose (MODEL_RUNNER_UVLOOP=0 keeps asyncio's).
        logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
        # What `model-runner check` finds without running the submission; the host still
        # serves, as the deployed host does (Setup will say what fails).
        for problem in static_findings(config.code_directory):
            logger.warning("submission check: %s", problem)

    try:
        await host.serve_until_signalled(on_ready=announce)
    except OSError as exc:
        where = config.path or f"{config.host or '*'}:{config.port}"
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}; "
                         "choose another --address") from None


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["check"]:  # `model-runner check`: try a submission, then exit
        from .check import main as check
        check(arguments[1:])
        return
    containment.die_with_parent()
    try:
        config, level = build_config(arguments)
        logging.basicConfig(level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        containment.install()
        _raise_file_limit()
        eventloop.run(_serve(config))
    except UsageError as exc:
        print(f"model-runner: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    # Drained: end now. Threads the model started (non-daemon ones included) would otherwise
    # keep the process alive after SIGTERM, until the orchestrator's SIGKILL.
    containment.exit_process(0)


if __name__ == "__main__":
    main()
