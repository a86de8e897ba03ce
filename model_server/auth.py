"""Bearer-token authentication, the same check for every front end (REST, gRPC, OpenAI).

Tokens come from `MODEL_SERVER_AUTH_TOKENS` — a file with one token per line, or a
directory (a mounted Kubernetes Secret) where every regular file holds one token. At
startup a path that is missing, unreadable or holds no token is a `ConfigError` whose
`reason` is one of `msv_contract.env.SECRET_REASONS`: the server stops with one line (exit 2)
and the operator reports that reason, naming the Secret.

While the server runs, `watch` re-reads the path every `MODEL_SERVER_AUTH_RELOAD_SECONDS`
(the kubelet rewrites a mounted Secret in place; a read is a few small files): a changed
set replaces the old one at once for every front end, since they share one `TokenAuth`, so
a revoked token stops working and a new one works without a restart. A read that yields no
token fails closed: every request but health is refused (401), `/v2/health/ready` and gRPC
ServerReady report not ready (`TokenAuth.problem` says why) and an error is logged, until a
token appears again. Authentication is never switched off by what the files hold.

A presented token is compared with every configured one by `hmac.compare_digest`, so the
time taken says nothing about how much of a token matched. Health endpoints stay open so
kubelet probes work; `/metrics` needs a token unless `MODEL_SERVER_AUTH_METRICS=false`.
Called by app.py (startup, the watch task), routers/fastpath.py and grpc_api/service.py.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path

import orjson

from msv_contract.env import AUTH_SECRET_MISSING, LIVE_PATH, NO_TOKENS, READY_PATH

log = logging.getLogger(__name__)

REALM = "model-server"
HEALTH_PATHS = frozenset({LIVE_PATH, READY_PATH})
METRICS_PATH = "/metrics"
RECHECK_S = 0.2
"""A reload that finds no token reads again after this before failing closed (the kubelet
swaps a Secret's files in place; a read in the middle of a swap of renamed keys is retried)."""


class ConfigError(Exception):
    """A setting names a file the server cannot use (missing, unreadable, empty).

    `reason` (one of msv_contract.env.SECRET_REASONS, or None) leads the message, so the
    termination message tells the operator which Secret problem it is."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.reason = reason


def read_tokens(path: Path) -> list[bytes]:
    """The tokens in `path` (file: one per line; directory: one per regular file)."""
    names: list[str] = []
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ConfigError(
                    f"auth tokens path {path} holds no token: the directory has no token file "
                    "(a mounted Secret that does not exist or has no keys)",
                    AUTH_SECRET_MISSING,
                )
            names = [p.name for p in files]
            texts = []
            for p in files:
                try:
                    texts.append(p.read_bytes())
                except FileNotFoundError:  # gone since the listing: the kubelet's update
                    continue
        else:
            texts = [path.read_bytes()]
    except FileNotFoundError as exc:
        raise ConfigError(
            f"cannot read auth tokens from {path}: {exc.strerror or exc}", AUTH_SECRET_MISSING
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read auth tokens from {path}: {exc.strerror or exc}", NO_TOKENS
        ) from None
    tokens = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    if not tokens:
        where = f" (its files {', '.join(names)} are empty)" if names else ""
        raise ConfigError(f"auth tokens path {path} holds no token{where}", NO_TOKENS)
    return tokens


class TokenAuth:
    """Decides whether a request may pass: its path is exempt, or it carries a known token.

    Made from a path (`from_path`), it can `reload` the tokens from there; with none left it
    refuses every token (`usable` is False, `problem` says why)."""

    __slots__ = ("_tokens", "exempt", "problem", "source")

    def __init__(
        self,
        tokens: Iterable[bytes],
        *,
        protect_metrics: bool = True,
        source: Path | None = None,
    ) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise ConfigError("authentication needs at least one token")
        self.exempt = HEALTH_PATHS if protect_metrics else HEALTH_PATHS | {METRICS_PATH}
        self.source = source
        self.problem: str | None = None
        """Why no token is accepted (the last reload's error), or None."""

    @classmethod
    def from_path(cls, path: Path, *, protect_metrics: bool = True) -> TokenAuth:
        """The tokens in `path`, reloadable from there; ConfigError when it holds none."""
        return cls(read_tokens(path), protect_metrics=protect_metrics, source=path)

    @property
    def usable(self) -> bool:
        """Whether some token is accepted (False only after a reload found none)."""
        return bool(self._tokens)

    def read(self) -> tuple[tuple[bytes, ...], str | None]:
        """(tokens, problem) as `source` holds them now; no tokens and the error when none."""
        if self.source is None:
            return self._tokens, None
        try:
            return tuple(read_tokens(self.source)), None
        except ConfigError as exc:
            return (), str(exc)

    def update(self, tokens: tuple[bytes, ...], problem: str | None = None) -> bool:
        """Accept exactly `tokens` from now on (none: refuse everything, `problem` says why);
        True when that changed what is accepted. Logs the change, never a token."""
        changed = set(tokens) != set(self._tokens)
        was_usable = self.usable
        self._tokens, self.problem = tokens, None if tokens else (problem or "no token")
        if tokens and changed:
            log.info(
                "Bearer tokens reloaded from %s: %d accepted%s",
                self.source,
                len(set(tokens)),
                "" if was_usable else "; authentication works again",
            )
        elif not tokens and was_usable:
            log.error(
                "No bearer token left in %s (%s): every request but health is refused (401) "
                "and the server reports not ready until the token Secret holds a token",
                self.source,
                self.problem,
            )
        return changed

    def reload(self) -> bool:
        """Re-read `source` and `update`; True when the accepted tokens changed."""
        return self.update(*self.read())

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


async def watch(auth: TokenAuth, interval_s: float) -> None:
    """Reload `auth` from its source every `interval_s` until cancelled. A read that finds
    no token is repeated once after RECHECK_S before it fails closed; an unexpected error
    is logged and the next check comes as usual."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            tokens, problem = auth.read()
            if not tokens and auth.usable:
                await asyncio.sleep(RECHECK_S)
                tokens, problem = auth.read()
            auth.update(tokens, problem)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Could not reload the bearer tokens from %s", auth.source)
