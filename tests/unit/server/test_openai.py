"""The OpenAI-compatible routes with the official `openai` client, unmodified.

Against the test double (fast, exact text) and against a tiny GPT-2 built locally by
tests/modelfactory.py (the real transformers backend: tokens, usage, streaming).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from model_server.app import create_app
from model_server.backends.base import Backend
from model_server.settings import Settings

from .conftest import UvicornThread
from .doubles import EchoBackend, GenerateBackend

TOKEN = "openai-token"


def _serve(backend: Backend | None, tmp: Path | None = None, **overrides: object) -> Iterator[str]:
    settings = Settings(model_name="gpt", **overrides)  # type: ignore[arg-type]
    app = create_app(settings, registry=CollectorRegistry(), backend=backend)
    with UvicornThread(app) as server:
        base = f"http://{server.url}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "model did not become ready"
            time.sleep(0.05)
        yield base


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tokens = tmp_path_factory.mktemp("openai") / "tokens"
    tokens.write_text(TOKEN)
    for base in _serve(GenerateBackend(), auth_tokens=tokens):
        yield base, tokens


@pytest.fixture
def client(double: tuple[str, Path]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{double[0]}/v1", api_key=TOKEN, max_retries=0)


def test_models_completions_and_chat(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["gpt"]
    assert client.models.retrieve("gpt").id == "gpt"
    done = client.completions.create(model="gpt", prompt="one two three four", max_tokens=2)
    assert done.object == "text_completion"
    assert done.choices[0].text == "one two "
    assert done.choices[0].finish_reason == "stop"  # the double counts no tokens
    chat = client.chat.completions.create(
        model="gpt",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
        ],
    )
    # the double echoes the prompt: the plain transcript of the conversation
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == "system: be brief user: hi there assistant: "


def test_streaming(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="gpt", prompt="a b c", max_tokens=5, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == "a b c "
    assert chunks[-1].choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "x y"}], stream=True
    )
    parts = list(chat)
    assert parts[0].choices[0].delta.role == "assistant"
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == "user: x y assistant: "


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 2}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"stop": ["\n"]}, "stop"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"best_of": 3}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
)
def test_unsupported_parameters_are_400(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="gpt", prompt="a", **kwargs)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert param in str(info.value)


def test_bad_requests_name_the_problem(client: openai.OpenAI, double: tuple[str, Path]) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="other", prompt="a")
    with pytest.raises(openai.BadRequestError, match="needs a role"):
        client.chat.completions.create(model="gpt", messages=[{"role": "wizard", "content": "x"}])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="only text content"):
        client.chat.completions.create(
            model="gpt",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],  # type: ignore[list-item]
        )
    base = double[0]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{base}/v1/completions", content=b"{nope", headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(
        f"{base}/v1/completions", json={"model": "gpt", "prompt": [1, 2]}, headers=headers
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_auth_on_the_openai_routes(double: tuple[str, Path]) -> None:
    base = double[0]
    for key in ("wrong",):
        bad = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="gpt", prompt="a")
    r = httpx.get(f"{base}/v1/models")  # no token at all
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_non_generative_model_is_400() -> None:
    for base in _serve(EchoBackend()):
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="does not support generate"):
            c.completions.create(model="gpt", prompt="a")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from modelfactory import make_text_generator

    model_dir = tmp_path_factory.mktemp("gpt2")
    make_text_generator(model_dir)
    yield from _serve(
        None, model_dir=model_dir, framework="transformers", task="text-generation", device="cpu"
    )


def test_tiny_gpt2_with_the_openai_client(gpt2: str) -> None:
    client = openai.OpenAI(base_url=f"{gpt2}/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model="gpt", prompt="the cat", max_tokens=6)
    assert isinstance(done.choices[0].text, str)
    assert done.usage is not None and done.usage.prompt_tokens >= 1
    assert 1 <= done.usage.completion_tokens <= 6
    assert done.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "hello"}],
        max_completion_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 5
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish and finish[-1] in ("stop", "length")
    # same seed and greedy decoding: the same text twice
    again = client.completions.create(model="gpt", prompt="the cat", max_tokens=6)
    assert again.choices[0].text == done.choices[0].text
