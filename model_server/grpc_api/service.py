"""The OIP v2 gRPC server: `inference.GRPCInferenceService` on its own port, same dataplane.

`start_grpc` runs a `grpc.aio` server on the event loop that serves REST, so both front ends
share the dataplane, its batcher and its metrics. Every call but ServerLive/ServerReady
(the health calls, open like their REST twins) must carry `authorization: Bearer <token>`
metadata when authentication is on — the same `TokenAuth` as REST; refused calls end with
UNAUTHENTICATED and a `www-authenticate` trailer; while that `TokenAuth` accepts no token
(a token Secret emptied while running) ServerReady answers not ready. Errors are the dataplane's
model_server.errors classes, mapped to gRPC codes by `errors.GRPC_CODES`. Inference is
accounted like every front end's (`RequestTracker.track`, model_server.metrics), under
the endpoint `grpc_infer`. The OIP gRPC service has no generate call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from model_server.auth import TokenAuth
from model_server.dataplane import DataPlane
from model_server.errors import GRPC_CODES, InvalidInput, ServerError
from model_server.grpc_api.codec import decode_infer, encode_infer
from model_server.grpc_api.schema import METHODS, SERVICE, message
from model_server.mirror import AUTHORIZATION

log = logging.getLogger(__name__)

OPEN_CALLS = frozenset({"ServerLive", "ServerReady"})
Handler = Callable[[Any, Any], Awaitable[Any]]


class InferenceService:
    """The RPC handlers, each a coroutine (request message, context) -> response message."""

    def __init__(self, dataplane: DataPlane, auth: TokenAuth | None = None) -> None:
        self._dp = dataplane
        self._auth = auth
        self._tracker = dataplane.metrics.tracker("grpc_infer")
        self._messages = {name: message(name) for pair in METHODS.values() for name in pair}

    def _reply(self, rpc: str, **fields: Any) -> Any:
        return self._messages[f"{rpc}Response"](**fields)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self._reply("ServerLive", live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        auth = self._auth
        ready = self._dp.ready and (auth is None or auth.usable)
        return self._reply("ServerReady", ready=ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = self._dp.model_ready(request.name, request.version or None)
        return self._reply("ModelReady", ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._reply("ServerMetadata", **self._dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self._dp.model_metadata(request.name, request.version or None)
        return self._reply(
            "ModelMetadata",
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=meta["inputs"],
            outputs=meta["outputs"],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        with self._tracker.track():  # a ServerError leaving it records its HTTP status
            dp = self._dp
            name, version = request.model_name, request.model_version or None
            batcher = dp.admit(name, version)
            decoded = decode_infer(request)
            outputs = await dp.run(batcher, decoded)
            return encode_infer(dp.model_name, dp.model_version, outputs, decoded, dp.variant)


def _wrap(
    rpc: str, handler: Handler, parse: Callable[[bytes], Any], auth: TokenAuth | None
) -> Handler:
    """The handler with the token check (unless open), the request parsed here (so bytes
    that are not the message are INVALID_ARGUMENT, not grpcio's INTERNAL) and errors as gRPC
    status codes."""
    check = auth if auth is not None and rpc not in OPEN_CALLS else None

    async def call(raw: bytes, context: Any) -> Any:
        if check is not None:
            presented = None
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    presented = value
                    break
            if not check.valid(presented):
                message_, challenge = check.challenge(presented)
                context.set_trailing_metadata((("www-authenticate", challenge),))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message_)
            AUTHORIZATION.set(presented)  # this call's task only: for the mirror
        try:
            try:
                request = parse(raw)
            except DecodeError as exc:
                raise InvalidInput(f"the request is not a valid {rpc}Request: {exc}") from None
            return await handler(request, context)
        except ServerError as exc:
            code = grpc.StatusCode[GRPC_CODES.get(exc.status_code, "INTERNAL")]
            await context.abort(code, exc.message)

    return call


def generic_handler(dataplane: DataPlane, auth: TokenAuth | None) -> Any:
    service = InferenceService(dataplane, auth)
    handlers = {}
    for rpc, (request_name, _) in METHODS.items():
        response_cls = message(f"{rpc}Response")
        handlers[rpc] = grpc.unary_unary_rpc_method_handler(
            _wrap(rpc, getattr(service, rpc), message(request_name).FromString, auth),
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start_grpc(
    dataplane: DataPlane,
    *,
    host: str,
    port: int,
    auth: TokenAuth | None,
    tls: tuple[bytes, bytes] | None,
    max_request_bytes: int,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on host:port (0: any free port); returns the server and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((generic_handler(dataplane, auth),))
    address = f"{host}:{port}"
    if tls is not None:
        cert, key = tls
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    log.info("Serving OIP v2 gRPC on %s:%d%s", host, bound, " (TLS)" if tls else "")
    return server, bound
