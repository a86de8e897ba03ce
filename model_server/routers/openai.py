"""OpenAI-compatible routes for text-generation models: /v1/models, /v1/completions and
/v1/chat/completions (with server-sent-event streaming), over the same dataplane.

Requests are checked here, by hand and strictly: the served model's name, a string prompt
or a list of text messages, and the sampling parameters the backends implement
(`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `n` = 1). Any other
parameter with a non-default value answers 400 naming it, rather than being ignored
silently. Errors use the OpenAI error shape (model_server.errors.openai_error_response);
generation goes through `DataPlane.generate`/`stream`, accounted by the same
`RequestTracker` as every front end (endpoints `openai_completions`, `openai_chat`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from model_server.dataplane import DataPlane
from model_server.errors import (
    InvalidInput,
    ModelNotFound,
    ServerError,
    openai_error_response,
)
from model_server.metrics import RequestTracker
from model_server.routers import schemas as s
from model_server.routers.fastpath import read_body

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])
JSON = "application/json"

# accepted when absent or at these values (what "not used" means for each)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "stop": (None, [], ""),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "functions": (None, []),
    "function_call": (None, "none"),
}
_USED = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "seed", "stream", "stream_options", "user", "store", "metadata"}  # fmt: skip
_ROLES = {"system", "developer", "user", "assistant"}


class _Bad(InvalidInput):
    """A 400 that names the offending parameter (OpenAI's `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _dp(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


def _model_card(dp: DataPlane) -> dict[str, Any]:
    return {"id": dp.model_name, "object": "model", "created": 0, "owned_by": "modelservice"}


@router.get("/models")
async def list_models(request: Request) -> Response:
    body = {"object": "list", "data": [_model_card(_dp(request))]}
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/models/{model_id}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    dp = _dp(request)
    if model_id != dp.model_name:
        return openai_error_response(_not_served(model_id, dp))
    return Response(orjson.dumps(_model_card(dp)), media_type=JSON)


def _not_served(model: object, dp: DataPlane) -> ModelNotFound:
    return ModelNotFound(
        f"model {model!r} is not served here (this server serves {dp.model_name!r})"
    )


def _parse(body: bytes, dp: DataPlane, chat: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(prompt or chat messages, backend parameters, request) of a body, or a 4xx."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidInput("the request body must be a JSON object")
    for key, value in request.items():
        if key in _USED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise _Bad(key, f"parameter {key!r} is not supported by this server")
            continue
        raise _Bad(key, f"unknown parameter {key!r}")
    model = request.get("model")
    if not isinstance(model, str):
        raise _Bad("model", "'model' must be a string naming the served model")
    if model != dp.model_name:
        raise _not_served(model, dp)
    if chat:
        prompt: Any = _messages(request.get("messages"))
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    else:
        prompt = _prompt(request.get("prompt"))
        max_tokens = request.get("max_tokens", 16)  # the API's default for completions
    params: dict[str, Any] = {}
    if max_tokens is not None:
        if type(max_tokens) is not int or max_tokens < 1:
            raise _Bad("max_tokens", "'max_tokens' must be a positive integer")
        params["max_tokens"] = max_tokens
    temperature = request.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise _Bad("temperature", "'temperature' must be a number in [0, 2]")
        params["temperature"] = float(temperature)
    top_p = request.get("top_p")
    if top_p is not None:
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise _Bad("top_p", "'top_p' must be a number in (0, 1]")
        params["top_p"] = float(top_p)
    seed = request.get("seed")
    if seed is not None:
        if type(seed) is not int:
            raise _Bad("seed", "'seed' must be an integer")
        params["seed"] = seed
    if not isinstance(request.get("stream", False), bool):
        raise _Bad("stream", "'stream' must be a boolean")
    options = request.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _Bad("stream_options", "only stream_options.include_usage is supported")
    return prompt, params, request


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise _Bad("prompt", "'prompt' must be a string (or a list of one string)")
    return value


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise _Bad("messages", "'messages' must be a non-empty list")
    plain: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _Bad("messages", f"messages[{i}] needs a role: {', '.join(sorted(_ROLES))}")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise _Bad("messages", f"messages[{i}]: only text content is supported")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise _Bad("messages", f"messages[{i}].content must be a string")
        plain.append({"role": str(message["role"]), "content": content})
    return plain


async def _complete(request: Request, chat: bool) -> Response:
    dp = _dp(request)
    tracker = dp.metrics.tracker("openai_chat" if chat else "openai_completions")
    started = tracker.start()
    status = 500
    streaming = False
    try:
        body = await read_body(request.receive, request.app.state.max_request_bytes)
        prompt, params, req = _parse(body, dp, chat)
        backend = dp.generator(dp.model_name, None)  # generative and loaded, else 4xx/503
        if chat:
            prompt = backend.chat_prompt(prompt)
        reply = _Reply(dp, chat, params.get("max_tokens"), prompt)
        if req.get("stream"):
            pieces = dp.stream(dp.model_name, None, prompt, params)
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            status, streaming = 200, True  # the stream finishes the accounting
            return StreamingResponse(
                reply.events(pieces, usage, tracker, started), media_type="text/event-stream"
            )
        text = await dp.generate(dp.model_name, None, prompt, params)
        status = 200
        return Response(orjson.dumps(reply.whole(text)), media_type=JSON)
    except ServerError as exc:
        status = exc.status_code
        return openai_error_response(exc, getattr(exc, "param", None))
    finally:
        if not streaming:
            tracker.finish(started, status)


class _Reply:
    """The response objects of one completion, whole or as stream chunks."""

    def __init__(self, dp: DataPlane, chat: bool, max_tokens: int | None, prompt: str) -> None:
        self.dp = dp
        self.chat = chat
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _usage(self, text: str) -> dict[str, int] | None:
        backend = self.dp.model.backend
        if backend is None:
            return None
        prompt_tokens = backend.count_tokens(self.prompt)
        completion_tokens = backend.count_tokens(text)
        if prompt_tokens is None or completion_tokens is None:
            return None
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _finish_reason(self, usage: Mapping[str, int] | None) -> str:
        limit = self.max_tokens
        if usage is not None and limit is not None and usage["completion_tokens"] >= limit:
            return "length"
        return "stop"

    def _object(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + ".chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.dp.model_name,
            "choices": choices,
        }

    def whole(self, text: str) -> dict[str, Any]:
        usage = self._usage(text)
        reason = self._finish_reason(usage)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        out = self._object([choice], chunk=False)
        if usage is not None:
            out["usage"] = usage
        return out

    def _chunk(self, piece: str | None, reason: str | None, first: bool) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"content": piece} if piece is not None else {}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": reason}
        return b"data: " + orjson.dumps(self._object([choice], chunk=True)) + b"\n\n"

    async def events(
        self,
        pieces: AsyncIterator[str],
        include_usage: bool,
        tracker: RequestTracker,
        started: float,
    ) -> AsyncIterator[bytes]:
        """SSE chunks, a last chunk with finish_reason, optional usage, then [DONE]."""
        status = 200
        text: list[str] = []
        try:
            async for piece in pieces:
                yield self._chunk(piece, None, first=not text)
                text.append(piece)
            usage = self._usage("".join(text))
            yield self._chunk(None, self._finish_reason(usage), first=not text)
            if include_usage:
                last = self._object([], chunk=True)
                last["usage"] = usage
                yield b"data: " + orjson.dumps(last) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except ServerError as exc:
            status = exc.status_code
            yield b"data: " + orjson.dumps({"error": {"message": exc.message}}) + b"\n\n"
        except Exception as exc:
            status = 500
            log.exception("Generation failed")
            error = {"error": {"message": f"generation failed: {type(exc).__name__}"}}
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        finally:
            tracker.finish(started, status)


@router.post("/completions", openapi_extra=s.body_ref(s.CompletionRequest))
async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


@router.post("/chat/completions", openapi_extra=s.body_ref(s.ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)
