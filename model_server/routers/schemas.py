"""Pydantic models of the OIP v2 REST and OpenAI-compatible APIs, for the OpenAPI document only.

The infer and generate routes declare these as their documented request and response
bodies but never validate through them: the codecs parse bodies with orjson and check them
by hand, which is several times cheaper per request (docs/model-server.md); generation
parameters are checked by model_server.generation's rules, whose limits are stated here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from model_server.generation import MAX_TOKENS_LIMIT

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the offending input or setting")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension; the first is the batch")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(
        description="variant, state (loading/ready/failed), reason on failure, framework, "
        "device, quantization, pruning_method, sparsity, parameters (count after "
        "optimization), size_bytes (weights in memory), artifact_bytes (on disk)"
    )


class RequestInput(BaseModel):
    name: str = Field(min_length=1)
    shape: list[int] = Field(min_length=1)
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the tensor travels in the binary section"
    )
    data: list[Any] = Field(
        description="Row-major values (nested lists allowed); strings for BYTES"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true returns this output in the binary section"
    )


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="Echoed in the response")
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        None, description="Outputs to return (default: all)"
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]

    model_config = {"protected_namespaces": ()}


class GenerateRequest(BaseModel):
    text_input: str
    parameters: dict[str, Any] | None = Field(
        None,
        description="Sampling parameters: max_tokens (or max_new_tokens), temperature, top_p, "
        "top_k, seed, do_sample; others are accepted and not used",
    )


class GenerateResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    text_output: str

    model_config = {"protected_namespaces": ()}


class CompletionRequest(BaseModel):
    """OpenAI `POST /v1/completions` (the parameters this server implements)."""

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stream: bool = False


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """OpenAI `POST /v1/chat/completions` (the parameters this server implements)."""

    model: str
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stream: bool = False


BODY_MODELS: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    GenerateRequest,
    CompletionRequest,
    ChatCompletionRequest,
)


def body_ref(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body (documented, not validated)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
