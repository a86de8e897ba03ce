"""`model-server serve|pull|optimize`: the command line of the model server image.

`serve` builds `Settings` from `MODEL_SERVER_*` environment variables with any flags given
on the command line taking precedence (one flag per setting, generated from the Settings
fields so they never drift), configures structured logging and runs uvicorn.
`pull` fetches a model into a directory (model_server.pull); `optimize` is registered by
model_server.optimize.command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from model_server.settings import Settings

log = logging.getLogger("model_server.cli")


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


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"model-server serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    from model_server.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    import uvicorn

    from model_server.app import create_app
    from model_server.auth import ConfigError
    from model_server.http_server import uvicorn_options

    try:
        app = create_app(settings)
    except ConfigError as exc:  # a token or TLS file the server cannot use
        print(f"model-server serve: {exc}", file=sys.stderr)
        return 2
    log.info(
        "Starting model server on %s:%d",
        settings.host,
        settings.port,
        extra={"model": settings.model_name, "variant": settings.variant},
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),
    )
    return 0


def _pull(args: argparse.Namespace) -> int:
    from model_server.logging import configure_logging
    from model_server.pull import PullError, pull

    configure_logging(args.log_format, "info")
    try:
        pull(args.uri, args.dest, sha256=args.sha256, force=args.force)
    except PullError as exc:
        log.error("Pull failed: %s", exc)
        return 1
    return 0


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
