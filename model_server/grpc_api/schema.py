"""The OIP v2 gRPC messages and service, declared here and built into protobuf classes at import.

Written from the public Open Inference Protocol gRPC specification (package `inference`,
service `GRPCInferenceService`): the health, metadata and infer calls this server answers,
with the field numbers of the spec, so unmodified clients such as `tritonclient.grpc`
talk to it (tests/unit/server/test_grpc.py also compares every field with the client's own
descriptors). The table below becomes a `FileDescriptorProto` and message classes through
protobuf's descriptor pool, so the server needs neither protoc nor generated files.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
}

# message -> fields (number, name, type); "repeated X", "map<X>" (string keys) and
# "oneof:group X" modify a type; other types are messages, relative to the package.
MESSAGES: dict[str, list[tuple[int, str, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [(1, "live", "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [(1, "ready", "bool")],
    "ModelReadyRequest": [(1, "name", "string"), (2, "version", "string")],
    "ModelReadyResponse": [(1, "ready", "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        (1, "name", "string"),
        (2, "version", "string"),
        (3, "extensions", "repeated string"),
    ],
    "ModelMetadataRequest": [(1, "name", "string"), (2, "version", "string")],
    "ModelMetadataResponse": [
        (1, "name", "string"),
        (2, "versions", "repeated string"),
        (3, "platform", "string"),
        (4, "inputs", "repeated ModelMetadataResponse.TensorMetadata"),
        (5, "outputs", "repeated ModelMetadataResponse.TensorMetadata"),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        (1, "name", "string"),
        (2, "datatype", "string"),
        (3, "shape", "repeated int64"),
    ],
    "InferParameter": [
        (1, "bool_param", "oneof:parameter_choice bool"),
        (2, "int64_param", "oneof:parameter_choice int64"),
        (3, "string_param", "oneof:parameter_choice string"),
        (4, "double_param", "oneof:parameter_choice double"),
        (5, "uint64_param", "oneof:parameter_choice uint64"),
    ],
    "InferTensorContents": [
        (1, "bool_contents", "repeated bool"),
        (2, "int_contents", "repeated int32"),
        (3, "int64_contents", "repeated int64"),
        (4, "uint_contents", "repeated uint32"),
        (5, "uint64_contents", "repeated uint64"),
        (6, "fp32_contents", "repeated float"),
        (7, "fp64_contents", "repeated double"),
        (8, "bytes_contents", "repeated bytes"),
    ],
    "ModelInferRequest": [
        (1, "model_name", "string"),
        (2, "model_version", "string"),
        (3, "id", "string"),
        (4, "parameters", "map<InferParameter>"),
        (5, "inputs", "repeated ModelInferRequest.InferInputTensor"),
        (6, "outputs", "repeated ModelInferRequest.InferRequestedOutputTensor"),
        (7, "raw_input_contents", "repeated bytes"),
    ],
    "ModelInferRequest.InferInputTensor": [
        (1, "name", "string"),
        (2, "datatype", "string"),
        (3, "shape", "repeated int64"),
        (4, "parameters", "map<InferParameter>"),
        (5, "contents", "InferTensorContents"),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        (1, "name", "string"),
        (2, "parameters", "map<InferParameter>"),
    ],
    "ModelInferResponse": [
        (1, "model_name", "string"),
        (2, "model_version", "string"),
        (3, "id", "string"),
        (4, "parameters", "map<InferParameter>"),
        (5, "outputs", "repeated ModelInferResponse.InferOutputTensor"),
        (6, "raw_output_contents", "repeated bytes"),
    ],
    "ModelInferResponse.InferOutputTensor": [
        (1, "name", "string"),
        (2, "datatype", "string"),
        (3, "shape", "repeated int64"),
        (4, "parameters", "map<InferParameter>"),
        (5, "contents", "InferTensorContents"),
    ],
}

# rpc name -> (request message, response message); all unary
METHODS: dict[str, tuple[str, str]] = {
    name: (f"{name}Request", f"{name}Response")
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    )
}


def _add_field(message: Any, number: int, name: str, kind: str) -> None:
    field = message.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
    if kind.startswith("oneof:"):
        group, kind = kind[len("oneof:") :].split(" ", 1)
        names = [o.name for o in message.oneof_decl]
        if group not in names:
            message.oneof_decl.add(name=group)
            names.append(group)
        field.oneof_index = names.index(group)
    if kind.startswith("map<"):
        value = kind[len("map<") : -1]
        entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        _add_field(entry, 1, "key", "string")
        _add_field(entry, 2, "value", value)
        field.label = _F.LABEL_REPEATED
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{message.name}.{entry_name}"
        return
    if kind.startswith("repeated "):
        field.label = _F.LABEL_REPEATED
        kind = kind[len("repeated ") :]
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="model_server/oip_grpc.proto", package=PACKAGE, syntax="proto3"
    )
    built: dict[str, Any] = {}
    for full_name, fields in MESSAGES.items():
        parent, _, short = full_name.rpartition(".")
        holder = built[parent].nested_type if parent else proto.message_type
        message = holder.add(name=short)
        built[full_name] = message
        for number, name, kind in fields:
            _add_field(message, number, name, kind)
    # map entry type names must include the full nesting path
    for full_name, message in built.items():
        for field in message.field:
            if field.type_name.endswith("Entry") and "." in full_name:
                field.type_name = f".{PACKAGE}.{full_name}.{field.type_name.rsplit('.', 1)[1]}"
    service = proto.service.add(name=SERVICE.rsplit(".", 1)[1])
    for rpc, (request, response) in METHODS.items():
        service.method.add(
            name=rpc, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}"
        )
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message(name: str) -> Any:
    """The protobuf class of message `name` (e.g. "ModelInferRequest")."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


def descriptor(name: str) -> Any:
    return _POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")
