"""How the REST front end listens: uvicorn's httptools protocol plus a header-read timeout.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but arms that timer only
after a response, and any byte cancels it: a connection that never finishes sending its
request headers — opened and silent, or one header byte a second — holds its socket
forever (measured with uvicorn 0.54 and httptools 0.9; h11's protocol in uvicorn arms the
same timer the same way). `HeaderTimeout` adds a periodic sweep, one per server, that
closes connections whose headers are late with `408 Request Timeout`. It reads uvicorn's
own per-connection state and adds nothing per request (bench/rest_instructions.py counts
it). Bodies are not limited by it: MODEL_SERVER_REQUEST_TIMEOUT_S bounds the request.

`uvicorn_options` turns uvicorn's proxy-headers middleware off unless the access log is on
(nothing else reads the client address it rewrites).

`read_tls` reads and checks the certificate and key once at startup (REST and gRPC use the
same pair); a missing, unreadable or mismatched file is a ConfigError: one line, exit 2, led
by the reason the operator reports (msv_contract.env: TLSSecretMissing, TLSSecretInvalid).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_server.auth import ConfigError
from msv_contract.env import TLS_SECRET_INVALID, TLS_SECRET_MISSING

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: 48\r\nconnection: close\r\n\r\n"
    b'{"error":"request headers not received in time"}'
)


class HeaderTimeout(HttpToolsProtocol):
    """uvicorn's httptools protocol that closes connections slow to send their headers.

    A connection waits for headers when it has not begun a request yet (since it opened),
    or when its current request (uvicorn's `scope`, new at each message begin) has no
    request cycle yet (uvicorn makes one when the headers are complete). The sweep runs
    every eighth of the timeout while connections are open, notes the request each waiting
    connection is on and when it first saw it waiting, and closes it once that request has
    waited the timeout: between 1 and 1.25 timeouts after its first byte. Per request this
    costs nothing: no parser callback is overridden (a timestamp per request did cost).
    """

    header_timeout_s = 10.0
    _waiting: Any = None  # the scope (or, before any request, the connection) found waiting
    _waiting_since = 0.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting, self._waiting_since = self, self.loop.time()
        state = self.server_state
        if not getattr(state, "header_sweep", False):
            state.header_sweep = True  # type: ignore[attr-defined]
            self.loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return max(0.05, self.header_timeout_s / 8)

    def _awaited(self) -> Any:
        """What this connection waits for headers of (its scope, or itself before any
        request); None when it does not wait for headers."""
        scope = self.scope
        if scope is None:
            return self
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope:
            return scope
        return None

    def _sweep(self) -> None:
        connections = self.connections
        state = self.server_state
        if not connections:
            state.header_sweep = False  # type: ignore[attr-defined]
            return
        now = self.loop.time()
        for conn in list(connections):
            if isinstance(conn, HeaderTimeout):
                awaited = conn._awaited()
                if awaited is None:
                    conn._waiting = None
                elif awaited is not conn._waiting:
                    conn._waiting, conn._waiting_since = awaited, now
                elif now - conn._waiting_since >= self.header_timeout_s:
                    conn._headers_late()
        self.loop.call_later(self._sweep_interval(), self._sweep)

    def _headers_late(self) -> None:
        self._waiting = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeaderTimeout]:
    """A HeaderTimeout subclass with this timeout (uvicorn takes a class for `http`)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeout,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn.run/Config keyword arguments for the listening side: protocol and TLS."""
    options: dict[str, Any] = {
        "http": protocol_class(settings.header_timeout_s),
        # X-Forwarded-For/-Proto rewrite the client address and scheme, which only the
        # access log reads: without it uvicorn's proxy-headers middleware is skipped (one
        # coroutine and a header scan per request)
        "proxy_headers": bool(settings.access_log),
    }
    if settings.tls_cert_file is not None:
        options["ssl_certfile"] = str(settings.tls_cert_file)
        options["ssl_keyfile"] = str(settings.tls_key_file)
    return options


def read_tls(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """(certificate chain, private key) PEM bytes, checked to load as a server pair."""
    pems = []
    for kind, path in (("certificate", cert_file), ("key", key_file)):
        try:
            pems.append(path.read_bytes())
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            reason = TLS_SECRET_MISSING if missing else TLS_SECRET_INVALID
            raise ConfigError(
                f"cannot read TLS {kind} {path}: {exc.strerror or exc}", reason
            ) from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"TLS certificate {cert_file} and key {key_file} do not load as a pair: {exc}",
            TLS_SECRET_INVALID,
        ) from None
    return pems[0], pems[1]
