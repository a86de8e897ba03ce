"""Bearer-token authentication, the same check for every front end (REST, gRPC, OpenAI).

Tokens come from `MODEL_SERVER_AUTH_TOKENS` — a file with one token per line, or a
directory (a mounted Kubernetes Secret) where every regular file holds one token. They are
read once at startup; a path that is missing, unreadable or holds no token is a
`ConfigError`, which stops the server with one line. A presented token is compared with
every configured one by `hmac.compare_digest`, so the time taken says nothing about how
much of a token matched. Health endpoints stay open so kubelet probes work; `/metrics`
needs a token unless `MODEL_SERVER_AUTH_METRICS=false`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

import orjson

REALM = "model-server"
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"


class ConfigError(Exception):
    """A setting names a file the server cannot use (missing, unreadable, empty)."""


def read_tokens(path: Path) -> list[bytes]:
    """The tokens in `path` (file: one per line; directory: one per regular file)."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            texts = [p.read_bytes() for p in files]
        else:
            texts = [path.read_bytes()]
    except OSError as exc:
        raise ConfigError(f"cannot read auth tokens from {path}: {exc.strerror or exc}") from None
    tokens = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    if not tokens:
        raise ConfigError(f"auth tokens path {path} holds no token")
    return tokens


class TokenAuth:
    """Decides whether a request may pass: its path is exempt, or it carries a known token."""

    __slots__ = ("_tokens", "exempt")

    def __init__(self, tokens: Iterable[bytes], *, protect_metrics: bool = True) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise ConfigError("authentication needs at least one token")
        self.exempt = HEALTH_PATHS if protect_metrics else HEALTH_PATHS | {METRICS_PATH}

    def valid(self, authorization: bytes | str | None) -> bool:
        """True when `authorization` is `Bearer <a configured token>`."""
        if authorization is None:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token = token.strip()
        ok = False
        for known in self._tokens:  # all of them, whatever matched
            ok |= hmac.compare_digest(known, token)
        return ok

    def challenge(self, authorization: bytes | str | None) -> tuple[str, str]:
        """(message, WWW-Authenticate value) for a request that failed `valid`."""
        if authorization is None:
            return "authentication required: send 'Authorization: Bearer <token>'", (
                f'Bearer realm="{REALM}"'
            )
        return "invalid bearer token", f'Bearer realm="{REALM}", error="invalid_token"'

    def asgi_denial(self, authorization: bytes | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The 401 body and headers for an HTTP request that failed `valid`."""
        message, header = self.challenge(authorization)
        body = orjson.dumps({"error": message})
        return body, [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"www-authenticate", header.encode()),
        ]
