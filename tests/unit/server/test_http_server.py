"""The listening side: connections slow to send their headers are closed (408)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from model_server.app import create_app
from model_server.http_server import uvicorn_options
from model_server.settings import Settings

from .conftest import UvicornThread
from .doubles import EchoBackend


@pytest.fixture(scope="module")
def server() -> Iterator[UvicornThread]:
    settings = Settings(model_name="echo", header_timeout_s=0.5)
    app = create_app(settings, registry=CollectorRegistry(), backend=EchoBackend())
    with UvicornThread(app, **uvicorn_options(settings)) as srv:
        yield srv


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(20)  # far beyond the 0.5 s header timeout: only a hang reaches it
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _read_live_answer(sock: socket.socket) -> bytes:
    """One liveness answer, read until its body (the connection stays open)."""
    answer = b""
    while b'{"live":true}' not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    return answer


def test_silent_connection_is_closed(server: UvicornThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_trickled_headers_are_closed(server: UvicornThread) -> None:
    """One header byte at a time, as the slowloris clients of the issue did."""
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(20)
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed it: what we want
                closed = True
                break
            time.sleep(0.05)
        data = b"" if closed else _read_until_closed(sock)
        assert closed or data.startswith(b"HTTP/1.1 408"), data[:80]


def test_keep_alive_connection_gets_a_fresh_timer_per_request(server: UvicornThread) -> None:
    """A complete request is answered; a slow next one on the same connection is closed."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(20)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_live_answer(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost:")  # and then nothing
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_headers_within_the_timeout_are_answered(server: UvicornThread) -> None:
    """Headers that pause for less than the timeout are not cut off: the request is served."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(20)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost:")
        time.sleep(0.2)  # well under the 0.5 s timeout
        sock.sendall(b" x\r\n\r\n")
        assert _read_live_answer(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("access_log", [False, True])
def test_proxy_headers_middleware_only_with_the_access_log(access_log: bool) -> None:
    """Only the access log reads the client address X-Forwarded-For rewrites: without it
    uvicorn does not wrap the app in its proxy-headers middleware (a coroutine per request)."""
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    settings = Settings(model_name="echo", access_log=access_log)
    app = create_app(settings, registry=CollectorRegistry(), backend=EchoBackend())
    config = uvicorn.Config(app, **uvicorn_options(settings))
    config.load()
    assert isinstance(config.loaded_app, ProxyHeadersMiddleware) is access_log
