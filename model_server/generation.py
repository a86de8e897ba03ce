"""Text generation requests: what every front end decodes a generation call into, and the
ONE set of rules its parameters are checked by.

Front ends decode their wire format, once, into a `GenerationRequest`: the OIP generate
extension (`/v2/models/{m}/generate` and `generate_stream`, by `codec.decode_generate`) and
the OpenAI-compatible `/v1/completions` and `/v1/chat/completions` (routers/openai.py).
They check only the shape of their wire format; the values are checked by `sampling`,
which the dataplane calls (`DataPlane.generate`/`stream`), so a parameter is refused with
the same message whatever the front end, and the backend receives a typed, validated
`SamplingParams` it only converts. The dataplane answers with a `Generation`: the text,
and the usage counted with the model's tokenizer.

Framework-free; imports nothing of the server but model_server.errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_server.errors import InvalidParameter

MAX_TOKENS_LIMIT = 1024
"""The most tokens one request may generate."""
DEFAULT_MAX_TOKENS = 32
"""Tokens generated when the request does not say (OpenAI completions default to 16)."""

ChatMessage = dict[str, str]
"""One chat message: {"role": ..., "content": ...} (text only)."""

_NO_STOP: tuple[Any, ...] = (None, "", [])


@dataclass(slots=True)
class GenerationRequest:
    """A generation request as its client sent it, whatever the front end.

    The sampling fields hold the client's JSON values unchecked (None: not sent); `sampling`
    checks them. Exactly one of `prompt` and `messages` is what the model continues.
    """

    prompt: str = ""
    messages: list[ChatMessage] | None = None
    """Chat messages: the dataplane renders them with the model's chat template."""
    max_tokens: Any = None
    max_tokens_param: str = "max_tokens"
    """The name the client gave the token limit (max_tokens, max_new_tokens,
    max_completion_tokens): errors name what the client sent."""
    temperature: Any = None
    top_p: Any = None
    top_k: Any = None
    seed: Any = None
    do_sample: Any = None
    stop: Any = None
    """Stop sequences: not implemented, so only absent or empty is accepted."""
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Further parameters the wire format lets through (the generate extension's are open,
    as in Triton): generation ignores them, the mirror sends them on."""

    @classmethod
    def from_parameters(
        cls, prompt: str, parameters: dict[str, Any], *, stream: bool = False
    ) -> GenerationRequest:
        """A request from generate-extension parameters (max_new_tokens before max_tokens)."""
        params = dict(parameters)
        limit_name = "max_new_tokens" if "max_new_tokens" in params else "max_tokens"
        return cls(
            prompt=prompt,
            max_tokens=params.pop(limit_name, None),
            max_tokens_param=limit_name,
            temperature=params.pop("temperature", None),
            top_p=params.pop("top_p", None),
            top_k=params.pop("top_k", None),
            seed=params.pop("seed", None),
            do_sample=params.pop("do_sample", None),
            stop=params.pop("stop", None),
            stream=stream,
            extra=params,
        )

    def parameters(self) -> dict[str, Any]:
        """The parameters by their generate-extension names (what the mirror sends on)."""
        out: dict[str, Any] = {}
        if self.max_tokens is not None:
            out[self.max_tokens_param] = self.max_tokens
        for name in ("temperature", "top_p", "top_k", "seed", "do_sample"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Checked generation settings: what a backend's `generate` receives."""

    max_new_tokens: int = DEFAULT_MAX_TOKENS
    do_sample: bool = False
    """False: greedy decoding (temperature, top_p and top_k do not apply)."""
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None


def sampling(request: GenerationRequest) -> SamplingParams:
    """The request's settings, checked: the ONE place a generation parameter is refused.

    Greedy unless `do_sample` is true or `temperature` is above 0. Raises InvalidParameter
    (400) naming the parameter.
    """
    max_new = request.max_tokens
    if max_new is None:
        max_new = DEFAULT_MAX_TOKENS
    elif type(max_new) is not int or not 1 <= max_new <= MAX_TOKENS_LIMIT:
        name = request.max_tokens_param
        raise InvalidParameter(
            name, f"'{name}' must be an integer in [1, {MAX_TOKENS_LIMIT}], got {max_new!r:.40}"
        )
    temperature = request.temperature
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        raise InvalidParameter("temperature", "'temperature' must be a number in [0, 2]")
    top_p = request.top_p
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise InvalidParameter("top_p", "'top_p' must be a number in (0, 1]")
    top_k = request.top_k
    if top_k is not None and not (type(top_k) is int and top_k >= 0):
        raise InvalidParameter("top_k", "'top_k' must be a non-negative integer")
    seed = request.seed
    if seed is not None and type(seed) is not int:
        raise InvalidParameter("seed", "'seed' must be an integer")
    do_sample = request.do_sample
    if do_sample is None:
        do_sample = temperature not in (None, 0)
    elif type(do_sample) is not bool:
        raise InvalidParameter("do_sample", "'do_sample' must be a boolean")
    elif do_sample and temperature == 0:
        raise InvalidParameter("temperature", "'temperature' must be > 0 when sampling")
    if request.stop not in _NO_STOP:
        raise InvalidParameter("stop", "parameter 'stop' is not supported by this server")
    if not do_sample:
        return SamplingParams(max_new, seed=seed)
    return SamplingParams(
        max_new,
        True,
        1.0 if temperature is None else float(temperature),
        None if top_p is None else float(top_p),
        top_k,
        seed,
    )


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of a generation, counted with the model's tokenizer."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class Generation:
    """One generation the dataplane runs: the prompt the model continued (chat template
    applied), its settings and the text generated so far; after the end, its usage."""

    __slots__ = ("_count", "params", "pieces", "prompt")

    def __init__(
        self, prompt: str, params: SamplingParams, count: Callable[[str], int | None]
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.pieces: list[str] = []
        self._count = count

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> Usage | None:
        """Prompt and completion tokens (None when the model has no tokenizer)."""
        prompt_tokens = self._count(self.prompt)
        completion_tokens = self._count(self.text)
        if prompt_tokens is None or completion_tokens is None:
            return None
        return Usage(prompt_tokens, completion_tokens)

    def finish_reason(self, usage: Usage | None) -> str:
        """OpenAI's finish_reason: `length` when the token limit was reached, else `stop`."""
        if usage is not None and usage.completion_tokens >= self.params.max_new_tokens:
            return "length"
        return "stop"
