"""One generation path: every front end decodes into a GenerationRequest, the dataplane checks
it with one set of rules (model_server.generation.sampling), renders chat messages and counts
the usage. Rules directly, then the same fault through each front end."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingABC
from typing import Any

import orjson
import pytest

from model_server.codec import decode_generate
from model_server.errors import InvalidInput, InvalidParameter
from model_server.generation import (
    DEFAULT_MAX_TOKENS,
    MAX_TOKENS_LIMIT,
    Generation,
    GenerationRequest,
    SamplingParams,
    Usage,
    sampling,
)

from .conftest import serve_app
from .doubles import GenerateBackend


# the rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [({"max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer in [1, 1024], got 0"),
     ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens", "in [1, 1024], got 1025"),
     ({"max_tokens": "5"}, "max_tokens", "got '5'"),
     ({"max_tokens": True}, "max_tokens", "got True"),
     ({"max_tokens": 0, "max_tokens_param": "max_new_tokens"}, "max_new_tokens",
      "'max_new_tokens' must be an integer"),
     ({"temperature": 5}, "temperature", "'temperature' must be a number in [0, 2]"),
     ({"temperature": "hot"}, "temperature", "'temperature' must be a number in [0, 2]"),
     ({"top_p": 0}, "top_p", "'top_p' must be a number in (0, 1]"),
     ({"top_k": -1}, "top_k", "'top_k' must be a non-negative integer"),
     ({"seed": 1.5}, "seed", "'seed' must be an integer"),
     ({"do_sample": "yes"}, "do_sample", "'do_sample' must be a boolean"),
     ({"do_sample": True, "temperature": 0}, "temperature",
      "'temperature' must be > 0 when sampling"),
     ({"stop": ["\n"]}, "stop", "parameter 'stop' is not supported by this server")],
)  # fmt: skip
def test_each_fault_is_refused_naming_its_parameter(
    fields: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(InvalidParameter) as info:
        sampling(GenerationRequest(prompt="p", **fields))
    assert info.value.param == param
    assert message in info.value.message
    assert info.value.status_code == 400


def test_greedy_unless_sampling_is_asked_for() -> None:
    assert sampling(GenerationRequest()) == SamplingParams(DEFAULT_MAX_TOKENS)
    assert sampling(GenerationRequest(temperature=0, top_p=0.5)) == SamplingParams(32)
    assert sampling(GenerationRequest(do_sample=False, temperature=0.7)).do_sample is False
    assert sampling(GenerationRequest(max_tokens=7, seed=3)) == SamplingParams(7, seed=3)
    sampled = sampling(GenerationRequest(temperature=1, top_p=0.9, top_k=5, seed=2, stop=[]))
    assert sampled == SamplingParams(32, True, 1.0, 0.9, 5, 2)
    assert isinstance(sampled.temperature, float)
    assert sampling(GenerationRequest(do_sample=True)) == SamplingParams(32, True, 1.0)


def test_generate_extension_parameters_decode_and_are_sent_on_as_given() -> None:
    params = {"max_new_tokens": 5, "temperature": 0.5, "ignore_eos": True}
    body = {"text_input": "hi", "max_tokens": 3, "stream": True, "id": "r1", "parameters": params}
    request = decode_generate(orjson.dumps(body))
    assert (request.prompt, request.messages, request.stream) == ("hi", None, False)
    assert (request.max_tokens, request.max_tokens_param) == (5, "max_new_tokens")
    assert request.extra == {"max_tokens": 3, "ignore_eos": True}  # not used, sent on
    assert sampling(request) == SamplingParams(5, True, 0.5)
    assert request.parameters() == {"max_new_tokens": 5, "temperature": 0.5,
                                    "max_tokens": 3, "ignore_eos": True}  # fmt: skip
    assert decode_generate(b'{"text_input": "x"}', stream=True).stream is True
    for bad, needle in ((b"[]", "JSON object"), (b'{"text_input": 1}', "'text_input'"),
                        (b'{"text_input": "x", "parameters": 1}', "'parameters'")):  # fmt: skip
        with pytest.raises(InvalidInput, match=needle):
            decode_generate(bad)


def test_usage_and_finish_reason_count_with_the_models_tokenizer() -> None:
    answer = Generation("a b c", SamplingParams(2), lambda text: len(text.split()))
    answer.pieces += ["x ", "y"]
    assert answer.text == "x y"
    usage = answer.usage()
    assert usage == Usage(3, 2) and usage.total_tokens == 5
    assert usage.as_dict() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert answer.finish_reason(usage) == "length"
    assert answer.finish_reason(Usage(3, 1)) == "stop"
    untokenized = Generation("a", SamplingParams(1), lambda text: None)
    assert untokenized.usage() is None and untokenized.finish_reason(None) == "stop"


# through the front ends ---------------------------------------------------------------------
class ChatBackend(GenerateBackend):
    """A generator with its own chat template and a tokenizer of words."""

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[Sequence[MappingABC[str, str]]] = []

    def chat_prompt(self, messages: Sequence[MappingABC[str, str]]) -> str:
        self.rendered.append(messages)
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"

    def count_tokens(self, text: str) -> int | None:
        return len(text.split())


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Any, ChatBackend, Any]]:
    with serve_app(ChatBackend()) as (client, backend, registry):
        yield client, backend, registry


@pytest.mark.parametrize(
    ("v2", "openai_body", "param", "message"),
    [({"max_tokens": 0}, {"max_tokens": 0}, "max_tokens",
      "'max_tokens' must be an integer in [1, 1024], got 0"),
     ({"max_tokens": 5000}, {"max_tokens": 5000}, "max_tokens",
      "'max_tokens' must be an integer in [1, 1024], got 5000"),
     ({"temperature": 3}, {"temperature": 3}, "temperature",
      "'temperature' must be a number in [0, 2]"),
     ({"top_p": 2}, {"top_p": 2}, "top_p", "'top_p' must be a number in (0, 1]"),
     ({"seed": "x"}, {"seed": "x"}, "seed", "'seed' must be an integer"),
     ({"stop": "\n"}, {"stop": "\n"}, "stop",
      "parameter 'stop' is not supported by this server")],
)  # fmt: skip
def test_the_same_fault_gets_the_same_message_on_every_front_end(
    served: tuple[Any, ChatBackend, Any],
    v2: dict[str, Any],
    openai_body: dict[str, Any],
    param: str,
    message: str,
) -> None:
    client = served[0]
    for path in ("/v2/models/echo/generate", "/v2/models/echo/generate_stream"):
        r = client.post(path, json={"text_input": "a b", "parameters": v2})
        assert r.status_code == 400 and r.json() == {"error": message}, path
    for path, body in (("/v1/completions", {"prompt": "a b"}),
                       ("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "a"}]})):  # fmt: skip
        r = client.post(path, json={"model": "echo", **body, **openai_body})
        assert r.status_code == 400, path
        error = r.json()["error"]
        assert (error["message"], error["param"]) == (message, param), path


def test_chat_is_rendered_by_the_dataplane_with_the_models_template(
    served: tuple[Any, ChatBackend, Any],
) -> None:
    client, backend, _ = served
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.post("/v1/chat/completions", json={"model": "echo", "messages": messages,
                                                   "max_completion_tokens": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"] == "<system> be brief "
    assert backend.rendered[-1] == messages
    # usage from the model's tokenizer: 6 prompt words, 3 generated = the limit
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}
    assert answer["choices"][0]["finish_reason"] == "length"
    r = client.post("/v1/chat/completions", json={"model": "echo", "messages": messages,
                                                   "max_completion_tokens": 0})  # fmt: skip
    assert r.json()["error"]["param"] == "max_completion_tokens"


def test_streamed_usage_is_counted_after_the_last_piece(
    served: tuple[Any, ChatBackend, Any],
) -> None:
    client = served[0]
    body = {"model": "echo", "prompt": "a b c", "max_tokens": 9, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "a b c "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # 3 of 9 tokens
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                   "total_tokens": 6}  # fmt: skip

