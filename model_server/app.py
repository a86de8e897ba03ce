"""FastAPI app factory and lifespan: one model per process, loaded after the server starts.

`create_app(settings, registry=None, backend=None)` builds the app without touching the
model. The lifespan starts loading in a worker thread and returns at once, so
`/v2/health/live` answers while a large model loads; readiness flips only after the load
succeeded.

A failed load is reported to whoever runs the app through `app.state.on_load_failed`
(called once with `load_failure_message(...)`): `model-server serve` writes it to the
termination-message file and exits with code 4, so Kubernetes shows the error on the pod and
the operator reports `ModelLoadFailed` with it (docs/model-server.md). Without that hook (tests,
or `MODEL_SERVER_EXIT_ON_LOAD_FAILURE=false`) the server stays up and not ready, with the
reason in the logs, the model metadata (`parameters.reason`) and every 503 body.

The start is timed (model_server.startup): process start, what the pull took (its marker in
the model directory), the load and the first ready answer, exported as
`model_server_startup_phase_seconds` and in the model metadata.

`ModelServerApp.start_draining()` (called by the CLI on SIGTERM) turns `/v2/health/ready`
to 503 at once while every other endpoint keeps serving.

With `MODEL_SERVER_AUTH_TOKENS` the tokens are read here (a path without a token stops the
start: ConfigError) and re-read by a task of the lifespan (`auth.watch`, every
`MODEL_SERVER_AUTH_RELOAD_SECONDS`); while no token is accepted, `/v2/health/ready` answers 503
naming the problem and every other request is refused (fail closed).

Tests pass a `backend` (any `model_server.backends.base.Backend`) and a fresh
`CollectorRegistry`; in production both come from the settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from pydantic.json_schema import models_json_schema

from model_server.auth import TokenAuth, watch
from model_server.backends import create_backend
from model_server.backends.base import Backend
from model_server.dataplane import SERVER_VERSION, DataPlane
from model_server.errors import ModelLoadError, ModelNotReady, error_response, install_handlers
from model_server.http_server import read_tls
from model_server.metrics import ServerMetrics
from model_server.mirror.control import MirrorControl, MirrorTarget
from model_server.mirror.sender import Mirror, tls_context
from model_server.routers import schemas
from model_server.routers.fastpath import RestEntry, RestInfer
from model_server.routers.openai import router as openai_router
from model_server.routers.v2 import router
from model_server.settings import Settings, detect_framework, get_settings, mirror_base_url
from model_server.startup import StartupClock
from msv_contract import env as contract_env

log = logging.getLogger(__name__)

READY_PATH = contract_env.READY_PATH


def _backend_factory(settings: Settings, backend: Backend | None) -> Any:
    def make() -> Backend:
        if backend is not None:
            return backend
        model_dir = Path(settings.model_dir)
        if not model_dir.exists():
            raise ModelLoadError(f"model directory {model_dir} does not exist")
        framework = settings.framework
        if framework == "auto":
            framework = detect_framework(model_dir)  # type: ignore[assignment]
        return create_backend(framework)

    return make


def load_failure_message(settings: Settings, reason: str) -> str:
    """One paragraph for the termination message: what failed, where, and why."""
    text = (
        f"model {settings.model_name!r} (variant {settings.variant}, framework "
        f"{settings.framework}) failed to load from {settings.model_dir}: {reason}"
    )
    return " ".join(text.split())


def load_auth(settings: Settings) -> TokenAuth | None:
    """The token check of every front end, or None when authentication is off."""
    if settings.auth_tokens is None:
        return None
    return TokenAuth.from_path(settings.auth_tokens, protect_metrics=settings.auth_metrics)


async def _start_grpc(
    app: FastAPI,
    settings: Settings,
    dataplane: DataPlane,
    auth: TokenAuth | None,
    tls: tuple[bytes, bytes] | None,
) -> Any:
    """The OIP v2 gRPC front end on MODEL_SERVER_GRPC_PORT (None: off), same event loop."""
    if settings.grpc_port is None:
        return None
    from model_server.grpc_api.service import start_grpc

    server, app.state.grpc_port = await start_grpc(
        dataplane,
        host=settings.host,
        port=settings.grpc_port,
        auth=auth,
        tls=tls,
        max_request_bytes=settings.max_request_bytes,
    )
    return server


def create_mirror(
    settings: Settings,
    metrics: ServerMetrics,
    dataplane: DataPlane,
    target: MirrorTarget | None = None,
) -> Mirror | None:
    """The mirror to `target` (a pod annotation's, see mirror.control), else the fixed one of
    MODEL_SERVER_MIRROR_URL, or None when off."""
    if target is None:
        if settings.mirror_url is None:
            return None
        target = MirrorTarget(settings.mirror_url, settings.mirror_percent, settings.mirror_variant)
    return Mirror(
        url=target.url,
        model_name=settings.model_name,
        percent=target.percent,
        queue_size=settings.mirror_queue,
        timeout_s=settings.mirror_timeout_seconds,
        metrics=metrics.mirror(target.variant),
        tokenize=dataplane.tokens,
        tls=tls_context(target.url, settings.tls_cert_file),
    )


def create_mirror_control(
    settings: Settings, metrics: ServerMetrics, dataplane: DataPlane
) -> MirrorControl | None:
    """Mirroring as the pod's annotation says (MODEL_SERVER_MIRROR_FILE), or None."""
    if settings.mirror_file is None:
        return None

    def make(target: MirrorTarget) -> Mirror:
        mirror = create_mirror(settings, metrics, dataplane, target)
        assert mirror is not None
        return mirror

    return MirrorControl(
        settings.mirror_file,
        dataplane,
        make,
        dataplane.task,
        mirror_base_url,
        settings.mirror_file_interval_seconds,
    )


class ModelServerApp(RestEntry, FastAPI):
    """FastAPI behind the REST entry: authentication, then the infer short cut.

    `RestEntry.__call__` (routers/fastpath.py) sees every request first, checks its token,
    and hands all but infer requests to `handle`, the normal FastAPI/Starlette stack. While
    draining, or while authentication accepts no token, `handle` answers the server
    readiness probe with 503 (the hot path is untouched).
    """

    draining = False

    def start_draining(self) -> None:
        """Report not ready from now on; requests keep being served."""
        self.draining = True

    def unready_reason(self) -> str | None:
        """Why the server must report not ready whatever the model's state, or None."""
        if self.draining:
            return "the server is shutting down"
        auth = self._auth
        if auth is not None and not auth.usable:
            return (
                f"no bearer token is accepted ({auth.problem}); every request is refused "
                "until the token Secret holds a token"
            )
        return None

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == READY_PATH:
            reason = self.unready_reason()
            if reason is not None:
                response = error_response(ModelNotReady(reason))
                await response(scope, receive, send)
                return
        await FastAPI.__call__(self, scope, receive, send)


def create_app(
    settings: Settings | None = None,
    registry: CollectorRegistry | None = None,
    backend: Backend | None = None,
) -> FastAPI:
    """The model server app; the model loads in its lifespan, never here."""
    settings = settings or get_settings()
    # a token or TLS file the server cannot use: ConfigError (one line, exit 2 in the CLI)
    auth = load_auth(settings)
    tls = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        tls = read_tls(settings.tls_cert_file, settings.tls_key_file)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServerMetrics(registry, settings.model_name, settings.variant)
    dataplane = DataPlane(
        model_name=settings.model_name,
        model_version=settings.model_version,
        variant=settings.variant,
        framework=backend.framework if backend is not None else settings.framework,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_delay_ms / 1000.0,
        max_queue=settings.max_queue,
        timeout_s=settings.request_timeout_s,
        metrics=metrics,
    )
    startup = StartupClock(settings.model_dir, on_ready=metrics.set_startup)
    dataplane.startup = startup
    make_backend = _backend_factory(settings, backend)
    mirror = create_mirror(settings, metrics, dataplane)

    async def load(app: FastAPI) -> None:
        log.info(
            "Loading model %s from %s",
            settings.model_name,
            settings.model_dir,
            extra={"model": settings.model_name, "variant": settings.variant},
        )
        startup.loading()
        await asyncio.to_thread(
            dataplane.load, make_backend, Path(settings.model_dir), settings.load_options()
        )
        startup.loaded()
        if dataplane.model.state == "failed":
            on_failed = getattr(app.state, "on_load_failed", None)
            if on_failed is not None:
                on_failed(load_failure_message(settings, dataplane.model.reason))
            return
        if mirror is not None:
            mirror.start(dataplane.task)
            dataplane.mirror = mirror
        dataplane.start_serving()
        control = create_mirror_control(settings, metrics, dataplane)
        if control is not None:
            app.state.mirror_control = control
            app.state.mirror_control_task = asyncio.create_task(
                control.run(), name="mirror-control"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        token_task = None
        if auth is not None and settings.auth_reload_seconds > 0:
            token_task = asyncio.create_task(
                watch(auth, settings.auth_reload_seconds), name="auth-token-reload"
            )
        app.state.load_task = asyncio.create_task(load(app), name="model-load")
        grpc_server = await _start_grpc(app, settings, dataplane, auth, tls)
        try:
            yield
        finally:
            task: asyncio.Task[None] = app.state.load_task
            if not task.done():
                task.cancel()
            if token_task is not None:
                token_task.cancel()
                await asyncio.gather(token_task, return_exceptions=True)
            if grpc_server is not None:
                await grpc_server.stop(5)
            control_task: asyncio.Task[None] | None = getattr(
                app.state, "mirror_control_task", None
            )
            if control_task is not None:
                control_task.cancel()
                await asyncio.gather(control_task, return_exceptions=True)
                await app.state.mirror_control.stop()
            if mirror is not None:
                dataplane.mirror = None
                await mirror.stop()
            await dataplane.stop()

    app = ModelServerApp(
        title="ModelService model server",
        version=SERVER_VERSION,
        description="Open Inference Protocol v2 (REST) with the generate extension, and an "
        "OpenAI-compatible API for text-generation models",
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    app.state.settings = settings
    app.state.max_request_bytes = settings.max_request_bytes
    app.state.registry = registry
    app.state.auth = auth
    app.state.tls = tls
    app.state.rest_infer = rest_infer = RestInfer(dataplane, settings.max_request_bytes)
    install_handlers(app)
    app.include_router(router)
    app.include_router(openai_router)
    if auth is not None:
        app.enable_auth(auth)
    if settings.infer_fast_path:
        app.enable_fast_path(rest_infer, settings.model_name, settings.model_version)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, defs = models_json_schema(
                [(m, "validation") for m in schemas.BODY_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                components.setdefault(name, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
