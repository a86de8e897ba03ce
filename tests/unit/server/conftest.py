"""Fixtures for model-server unit tests: an app around a test-double backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from localcluster.ports import free_port
from model_server.app import create_app
from model_server.backends.base import Backend
from model_server.settings import Settings

from .doubles import EchoBackend


def wait_ready(client: TestClient, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("model did not become ready")


@contextmanager
def serve_app(
    backend: Backend | None = None, *, ready: bool = True, **overrides: Any
) -> Iterator[tuple[TestClient, Backend, CollectorRegistry]]:
    backend = backend if backend is not None else EchoBackend()
    registry = CollectorRegistry()
    settings = Settings(model_name="echo", variant="int8", **overrides)
    app = create_app(settings, registry=registry, backend=backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client, backend, registry


@pytest.fixture
def client() -> Iterator[TestClient]:
    with serve_app() as (c, _, _):
        yield c


@pytest.fixture
def app_factory() -> Callable[..., Any]:
    return serve_app


class UvicornThread:
    """Runs an ASGI app under uvicorn on a loopback port in a background thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"
