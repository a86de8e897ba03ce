"""`model-server serve|pull|optimize`: the command line of the model server image.

`serve` builds `Settings` from `MODEL_SERVER_*` environment variables with any flags given
on the command line taking precedence (one flag per setting, generated from the Settings
fields so they never drift), refuses `MODEL_SERVER_*` variables no setting reads (a typo
must not be silently ignored), configures structured logging and runs uvicorn.
`pull` fetches a model into a directory (model_server.pull); `optimize` is registered by
model_server.optimize.command.

The process is the unit Kubernetes sees, so this module owns how it ends:

* exit codes: 0 clean shutdown, 1 pull failed (or any unexpected error), 2 invalid settings
  or unknown `MODEL_SERVER_*` variables, 4 the model failed to load;
* after a successful pull its report (one JSON object: msv_contract.env.PULL_*) goes to the
  termination-message file, where the operator reads what the pull took;
* on 1, 2 and 4 a one-paragraph error goes to the termination-message file
  (`MODEL_SERVER_TERMINATION_LOG`, default /dev/termination-log), which the operator copies
  into the ModelService's `ModelLoadFailed` condition;
* SIGTERM drains: `/v2/health/ready` answers 503 at once and every response carries
  `Connection: close` (clients reconnect, through the Service, to another pod) while all
  requests keep being served for `drain_seconds`; then uvicorn stops accepting, lets the
  requests in flight finish (up to SHUTDOWN_TIMEOUT_S) and the process exits 0. A second
  SIGTERM or a SIGINT skips the rest of the drain.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from model_server.settings import ENV_PREFIX, Settings, termination_log_path, unknown_env

log = logging.getLogger("model_server.cli")

EXIT_OK = 0
EXIT_PULL_FAILED = 1
EXIT_INVALID_SETTINGS = 2
EXIT_LOAD_FAILED = 4
SHUTDOWN_TIMEOUT_S = 10.0
"""After the drain: how long requests in flight may take before they are cancelled."""
TERMINATION_MESSAGE_MAX = 4096
"""Kubernetes keeps at most 4096 bytes of a termination message."""


def write_termination_message(path: Path, message: str) -> bool:
    """Write `message` as one paragraph to `path` if that file exists and is writable.

    Kubernetes creates the file in every container; outside a pod it is normally absent and
    nothing is written (never created: /dev is not ours to fill). Returns True if written.
    """
    text = " ".join(message.split()).encode()[:TERMINATION_MESSAGE_MAX]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError:
        return False
    try:
        os.write(fd, text.decode(errors="ignore").encode())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "MODEL_SERVER_" + name.upper()
        help_text = (field.description or "").replace("%", "%%")
        default = field.default
        help_text = f"{help_text} [env {env}; default {default!s}]".strip()
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def _server(config: Any, app: Any, drain_seconds: float) -> Any:
    """A uvicorn.Server that drains on SIGTERM and can be told to exit with a code."""
    import uvicorn

    class ModelServer(uvicorn.Server):
        exit_code = EXIT_OK
        drain_until: float | None = None
        drain_logged = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Replaces uvicorn's handler, which would re-raise the signal after shutting
            # down (exit status 143 instead of 0). Runs in the main thread: only set flags.
            if sig == signal.SIGTERM and self.drain_until is None and not self.should_exit:
                self.drain_until = time.monotonic() + drain_seconds
                app.start_draining()
                close = (b"connection", b"close")
                self.config.encoded_headers = [*self.config.encoded_headers, close]
                self.server_state.default_headers = [*self.server_state.default_headers, close]
                return
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None and not self.drain_logged:
                self.drain_logged = True  # logged here, not in the signal handler
                log.info("SIGTERM: not ready, draining for %.1f s", drain_seconds)
            if self.drain_until is not None and time.monotonic() >= self.drain_until:
                self.should_exit = True
            return bool(await super().on_tick(counter))

        def fail(self, code: int) -> None:
            self.exit_code = code
            self.should_exit = True

    return ModelServer(config)


def one_line(exc: ValidationError) -> str:
    """A settings error on one line: `MODEL_SERVER_X: reason; ...` (pydantic's is several)."""
    parts = []
    for error in exc.errors():
        where = "".join(str(x) for x in error["loc"][:1])
        name = f"{ENV_PREFIX}{where.upper()}: " if where else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}{message} (got {error['input']!r})" if where else message)
    return "; ".join(parts)


def _invalid_settings(message: str) -> int:
    print(f"model-server serve: {message}", file=sys.stderr)
    write_termination_message(termination_log_path(), f"model-server serve: {message}")
    return EXIT_INVALID_SETTINGS


def _serve(args: argparse.Namespace) -> int:
    unknown = unknown_env()
    if unknown:
        return _invalid_settings(
            "unknown environment variable(s) "
            + ", ".join(unknown)
            + "; see `model-server serve --help` for the MODEL_SERVER_* settings"
        )
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        return _invalid_settings(f"invalid settings: {one_line(exc)}")
    from model_server.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    import uvicorn

    from model_server.app import create_app
    from model_server.auth import ConfigError
    from model_server.http_server import uvicorn_options

    try:
        app = create_app(settings)
    except ConfigError as exc:  # a token or TLS file the server cannot use
        return _invalid_settings(str(exc))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_S),
        **uvicorn_options(settings),
    )
    server = _server(config, app, settings.drain_seconds)
    if settings.exit_on_load_failure:

        def load_failed(message: str) -> None:
            write_termination_message(settings.termination_log, message)
            log.error("Exiting with code %d: %s", EXIT_LOAD_FAILED, message)
            server.fail(EXIT_LOAD_FAILED)

        app.state.on_load_failed = load_failed
    log.info(
        "Starting model server on %s:%d",
        settings.host,
        settings.port,
        extra={"model": settings.model_name, "variant": settings.variant},
    )
    server.run()
    return int(server.exit_code)


def _pull(args: argparse.Namespace) -> int:
    from model_server.logging import configure_logging
    from model_server.pull import PullError, pull_report

    configure_logging(args.log_format, "info")
    try:
        done = pull_report(args.uri, args.dest, sha256=args.sha256, force=args.force,
                           cache=args.cache or None)
    except PullError as exc:
        log.error("Pull failed: %s", exc)
        write_termination_message(termination_log_path(), f"model pull failed: {exc}")
        return EXIT_PULL_FAILED
    # what the pull took and where its bytes came from (a model cache that was not used says
    # why: the operator posts it as a Warning), for status.variants[].startup (msv_contract.env)
    write_termination_message(termination_log_path(),
                              json.dumps(done.report(), separators=(",", ":")))
    return EXIT_OK


def _optimize_command() -> Any:
    """model_server.optimize.command (owned by the optimize package), if present."""
    try:
        return importlib.import_module("model_server.optimize.command")
    except ImportError:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-server", description="Open Inference Protocol v2 model server"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve one model over OIP v2 REST",
        description="Serve one model. Every flag has a MODEL_SERVER_* environment variable; "
        "flags win.",
    )
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)

    pull = sub.add_parser(
        "pull",
        help="fetch a model (file://, http(s)://, s3://) into a directory atomically",
    )
    pull.add_argument("uri", help="file:///path, https://host/model.tar.gz, s3://bucket/prefix")
    pull.add_argument("dest", help="directory to create (or an empty directory, e.g. a volume)")
    pull.add_argument("--sha256", help="expected SHA-256 (hex) of the downloaded file or archive")
    pull.add_argument(
        "--force", action="store_true", help="replace a non-empty DEST that was not pulled here"
    )
    pull.add_argument(
        "--cache", metavar="URL", default="",
        help="the node's model cache agent (http://host:port): asked first, the store "
             "directly when it cannot answer (the operator sets it with the chart's modelCache)",
    )
    pull.add_argument("--log-format", choices=["json", "text"], default="json")
    pull.set_defaults(func=_pull)

    optimize_command = _optimize_command()
    if optimize_command is not None:
        optimize_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "optimize":
        return int(_optimize_command().run(args) or 0)
    func = args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
