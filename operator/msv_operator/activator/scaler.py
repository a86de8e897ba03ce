"""KEDA's external scaler interface (``externalscaler.ExternalScaler``, gRPC) over the held
requests: a ScaledObject's ``external-push`` trigger names its target in its metadata
(``SCALER_METADATA``: namespace, modelservice, variant).

* ``IsActive``: are requests held for the target (by any replica, ``counts``)?
* ``StreamIsActive``: the same answer, pushed at once whenever a count changes (the held
  request that must bring a pod back is reported as it arrives, not at KEDA's next poll),
  and again every ``heartbeat`` seconds;
* ``GetMetricSpec``: one metric, ``METRIC``, target 1 (a pod per held request at most, the
  ScaledObject's maxReplicaCount caps it);
* ``GetMetrics``: the held count.

The messages are written from KEDA's documented ``externalscaler.proto`` (same package,
names and field numbers) and built into protobuf classes at import, like the model server's
OIP gRPC messages: no protoc, no generated files.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from msv_contract import scaletozero as stz
from msv_operator.activator.holder import Signal, Target

log = logging.getLogger(__name__)

PACKAGE = "externalscaler"
SERVICE = f"{PACKAGE}.ExternalScaler"
METRIC = "msv-held-requests"
HEARTBEAT_SECONDS = 10.0

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int64": _F.TYPE_INT64,
          "double": _F.TYPE_DOUBLE}

# message -> [(number, name, type)]; "repeated X" and "map" (string to string) modify a type.
MESSAGES: dict[str, list[tuple[int, str, str]]] = {
    "ScaledObjectRef": [(1, "name", "string"), (2, "namespace", "string"),
                        (3, "scalerMetadata", "map")],
    "IsActiveResponse": [(1, "result", "bool")],
    "GetMetricSpecResponse": [(1, "metricSpecs", "repeated MetricSpec")],
    "MetricSpec": [(1, "metricName", "string"), (2, "targetSize", "int64"),
                   (3, "targetSizeFloat", "double")],
    "GetMetricsRequest": [(1, "scaledObjectRef", "ScaledObjectRef"),
                          (2, "metricName", "string")],
    "GetMetricsResponse": [(1, "metricValues", "repeated MetricValue")],
    "MetricValue": [(1, "metricName", "string"), (2, "metricValue", "int64"),
                    (3, "metricValueFloat", "double")],
}
# rpc -> (request, response, server streaming)
METHODS: dict[str, tuple[str, str, bool]] = {
    "IsActive": ("ScaledObjectRef", "IsActiveResponse", False),
    "StreamIsActive": ("ScaledObjectRef", "IsActiveResponse", True),
    "GetMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", False),
    "GetMetrics": ("GetMetricsRequest", "GetMetricsResponse", False),
}


def _set_type(field: Any, kind: str) -> None:
    if kind in _TYPES:
        field.type = _TYPES[kind]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="msv_operator/externalscaler.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for number, field_name, kind in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind == "map":
                entry_name = field_name[0].upper() + field_name[1:] + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL,
                                type=_F.TYPE_STRING)
                entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL,
                                type=_F.TYPE_STRING)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{name}.{entry_name}"
                continue
            if kind.startswith("repeated "):
                field.label = _F.LABEL_REPEATED
                kind = kind[len("repeated "):]
            _set_type(field, kind)
    service = proto.service.add(name=SERVICE.rsplit(".", 1)[1])
    for rpc, (request, response, streaming) in METHODS.items():
        service.method.add(name=rpc, input_type=f".{PACKAGE}.{request}",
                           output_type=f".{PACKAGE}.{response}", server_streaming=streaming)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message(name: str) -> Any:
    """The protobuf class of message ``name`` (e.g. "ScaledObjectRef")."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


class BadReference(ValueError):
    """A ScaledObject's trigger metadata does not name a target."""


def target_of(ref: Any) -> Target:
    """(namespace, modelservice, variant) from a ScaledObjectRef's ``scalerMetadata``; the
    namespace defaults to the ScaledObject's own."""
    meta = dict(ref.scalerMetadata)
    namespace = meta.get("namespace") or ref.namespace
    modelservice = meta.get("modelservice", "")
    if not namespace or not modelservice:
        raise BadReference(
            f"ScaledObject {ref.namespace}/{ref.name}: the trigger's metadata must name "
            f"{', '.join(stz.SCALER_METADATA)} (modelservice is missing)")
    return (namespace, modelservice, meta.get("variant", ""))


class Scaler:
    """The RPC handlers over ``counts`` (held requests by target, every replica) and
    ``changed`` (fired when a count may have changed)."""

    def __init__(self, counts: Callable[[], dict[Target, int]], changed: Signal,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.counts = counts
        self.changed = changed
        self.heartbeat = heartbeat
        self._m = {name: message(name) for name in MESSAGES}

    def count(self, target: Target) -> int:
        """Held requests that a variant's ScaledObject must see: those held on its own Service
        and those held on the ModelService's stable Service (variant ""), which is held only
        while every variant it routes to is at zero, so any of them may answer."""
        counts = self.counts()
        ns, model, variant = target
        return int(counts.get(target, 0)) + (int(counts.get((ns, model, ""), 0)) if variant
                                             else 0)

    def held(self, ref: Any) -> int:
        return self.count(target_of(ref))

    async def _target(self, ref: Any, context: Any) -> Target:
        try:
            return target_of(ref)
        except BadReference as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # abort raises; this line only satisfies the type checker

    async def IsActive(self, request: Any, context: Any) -> Any:
        target = await self._target(request, context)
        return self._m["IsActiveResponse"](result=self.count(target) > 0)

    async def StreamIsActive(self, request: Any, context: Any) -> AsyncIterator[Any]:
        target = await self._target(request, context)
        wake = self.changed.subscribe()
        try:
            last: bool | None = None
            while True:
                wake.clear()  # before reading: a change while the answer is sent wakes us
                active = self.count(target) > 0
                if active != last or active:
                    yield self._m["IsActiveResponse"](result=active)
                    last = active
                try:
                    await asyncio.wait_for(wake.wait(), self.heartbeat)
                except TimeoutError:
                    last = None  # a heartbeat repeats the answer
        finally:
            self.changed.unsubscribe(wake)

    async def GetMetricSpec(self, request: Any, context: Any) -> Any:
        await self._target(request, context)
        spec = self._m["MetricSpec"](metricName=METRIC, targetSize=1, targetSizeFloat=1.0)
        return self._m["GetMetricSpecResponse"](metricSpecs=[spec])

    async def GetMetrics(self, request: Any, context: Any) -> Any:
        target = await self._target(request.scaledObjectRef, context)
        n = self.count(target)
        value = self._m["MetricValue"](metricName=request.metricName or METRIC,
                                       metricValue=n, metricValueFloat=float(n))
        return self._m["GetMetricsResponse"](metricValues=[value])


def handler(scaler: Scaler) -> grpc.GenericRpcHandler:
    """The service's method handlers for a ``grpc.aio`` server."""
    methods: dict[str, grpc.RpcMethodHandler] = {}
    for rpc, (request, response, streaming) in METHODS.items():
        make = (grpc.unary_stream_rpc_method_handler if streaming
                else grpc.unary_unary_rpc_method_handler)
        methods[rpc] = make(getattr(scaler, rpc),
                            request_deserializer=message(request).FromString,
                            response_serializer=message(response).SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(scaler: Scaler, bind: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The started server and its port (``port`` 0: one the system chose)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(scaler),))
    bound = server.add_insecure_port(f"{bind}:{port}")
    if not bound:
        raise OSError(f"scaler port {port}: cannot listen")
    await server.start()
    log.info("KEDA external scaler on port %d", bound)
    return server, bound
