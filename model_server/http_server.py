"""How the REST front end listens: uvicorn's httptools protocol plus a header-read timeout.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but arms that timer only
after a response, and any byte cancels it: a connection that never finishes sending its
request headers — opened and silent, or one header byte a second — holds its socket
forever (measured with uvicorn 0.54 and httptools 0.9; h11's protocol in uvicorn arms the
same timer the same way). `HeaderTimeout` notes when a connection opens and when a request
starts, forgets it once that request's headers are complete, and a periodic sweep closes
connections past the timeout with `408 Request Timeout`. Bodies are not limited by it:
MODEL_SERVER_REQUEST_TIMEOUT_S bounds the request.

`read_tls` reads and checks the certificate and key once at startup (REST and gRPC use the
same pair); a missing, unreadable or mismatched file is a ConfigError: one line, exit 2.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_server.auth import ConfigError

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: 48\r\nconnection: close\r\n\r\n"
    b'{"error":"request headers not received in time"}'
)


class HeaderTimeout(HttpToolsProtocol):
    """uvicorn's httptools protocol that closes connections slow to send their headers.

    A request costs two attribute writes: `_headers_since` is set when a connection opens
    or a request starts and cleared when the headers are complete. One sweep per server,
    every quarter of the timeout while connections are open, closes those past it (a timer
    per request would cost more than routing it).
    """

    header_timeout_s = 10.0
    _headers_since: float | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_since = self.loop.time()
        state = self.server_state
        if not getattr(state, "header_sweep", False):
            state.header_sweep = True  # type: ignore[attr-defined]
            self.loop.call_later(self._sweep_interval(), self._sweep)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_since is None:
            self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._headers_since = None
        super().on_headers_complete()

    def _sweep_interval(self) -> float:
        return max(0.05, self.header_timeout_s / 4)

    def _sweep(self) -> None:
        connections = self.connections
        state = self.server_state
        if not connections:
            state.header_sweep = False  # type: ignore[attr-defined]
            return
        deadline = self.loop.time() - self.header_timeout_s
        for conn in list(connections):
            if isinstance(conn, HeaderTimeout):
                since = conn._headers_since
                if since is not None and since < deadline:
                    conn._headers_late()
        self.loop.call_later(self._sweep_interval(), self._sweep)

    def _headers_late(self) -> None:
        self._headers_since = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeaderTimeout]:
    """A HeaderTimeout subclass with this timeout (uvicorn takes a class for `http`)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeout,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn.run/Config keyword arguments for the listening side: protocol and TLS."""
    options: dict[str, Any] = {"http": protocol_class(settings.header_timeout_s)}
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
            raise ConfigError(f"cannot read TLS {kind} {path}: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"TLS certificate {cert_file} and key {key_file} do not load as a pair: {exc}"
        ) from None
    return pems[0], pems[1]
