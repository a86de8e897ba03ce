"""Mirroring between two in-process apps (the candidate under uvicorn on loopback), the
comparators on hand-made answers, the request codec the mirror sends with, and settings."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model_server.app import create_app
from model_server.backends.base import Backend
from model_server.cli import main
from model_server.codec import (
    InferRequest,
    decode_json,
    decode_response,
    encode_json,
    encode_request,
)
from model_server.dataplane import artifact_bytes
from model_server.generation import Generation, GenerationRequest, sampling
from model_server.http_server import uvicorn_options
from model_server.metrics import MirrorMetrics
from model_server.mirror.classification import classification_agreement
from model_server.mirror.control import ANNOTATION, MirrorTarget, parse_target, read_annotations
from model_server.mirror.generation import token_agreement
from model_server.mirror.sender import Mirror, comparison_kind
from model_server.mirror.tensors import ATOL, RTOL, tensor_agreement
from model_server.settings import Settings, mirror_base_url

from .certs import write_tls_secret
from .conftest import UvicornThread, serve_app
from .doubles import EchoBackend, GenerateBackend

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
ROW = {"inputs": [X, {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]}


class ScaledEcho(EchoBackend):
    """The echo with y 5% off: a candidate whose FP32 output disagrees, the rest agrees."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().predict(inputs)
        out["y"] = out["y"] * np.float32(1.05)
        return out


@contextmanager
def candidate(
    backend: Backend, tokens: Path | None = None, tls: Path | None = None
) -> Iterator[UvicornThread]:
    """A candidate server on loopback (with TLS from the Secret directory `tls`)."""
    files = {"tls_cert_file": tls / "tls.crt", "tls_key_file": tls / "tls.key"} if tls else {}
    settings = Settings(model_name="echo", variant="cand", auth_tokens=tokens, **files)
    app = create_app(settings, registry=CollectorRegistry(), backend=backend)
    with UvicornThread(app, **uvicorn_options(settings)) as server:
        yield server


def mirror_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(
        name, {"model": "echo", "variant": "int8", "target": "cand", **labels}
    )
    return 0.0 if value is None else value


def wait_compared(registry: CollectorRegistry, n: int) -> None:
    deadline = time.monotonic() + 10
    while mirror_value(registry, "model_server_mirror_requests_total", outcome="compared") < n:
        failed = mirror_value(registry, "model_server_mirror_requests_total", outcome="failed")
        assert failed == 0, "a mirrored request failed"
        assert time.monotonic() < deadline, "the mirror never compared"
        time.sleep(0.01)


def mirrored(url: str, scheme: str = "http") -> dict[str, Any]:
    return {"mirror_url": f"{scheme}://{url}", "mirror_percent": 100, "mirror_variant": "cand"}


def test_identical_candidate_agrees_with_the_callers_token(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    tokens = tmp_path / "tokens"
    with (
        candidate(EchoBackend(), tokens) as cand,
        serve_app(EchoBackend(), **mirrored(cand.url), auth_tokens=tokens) as (client, _, reg),
    ):
        for _ in range(3):
            assert client.post("/v2/models/echo/infer", json=ROW, headers=AUTH).status_code == 200
        wait_compared(reg, 3)
        assert mirror_value(reg, "model_server_mirror_requests_total", outcome="sent") == 3
        assert mirror_value(reg, "model_server_mirror_agreement_sum") == 3.0
        assert mirror_value(reg, "model_server_mirror_agreement_count") == 3
        assert mirror_value(reg, "model_server_mirror_duration_seconds_count") == 3


def test_a_disagreeing_candidate_scores_the_share_of_close_elements() -> None:
    with (
        candidate(ScaledEcho()) as cand,
        serve_app(EchoBackend(), **mirrored(cand.url)) as (client, _, reg),
    ):
        assert client.post("/v2/models/echo/infer", json=ROW).status_code == 200
        wait_compared(reg, 1)
        # y (4 elements) is 5% off, upper and length (1 each) are equal: 2 of 6 agree
        assert mirror_value(reg, "model_server_mirror_agreement_sum") == pytest.approx(2 / 6)


def test_generation_is_mirrored_when_greedy_only() -> None:
    with (
        candidate(GenerateBackend()) as cand,
        serve_app(GenerateBackend(), **mirrored(cand.url)) as (client, _, reg),
    ):
        body = {"text_input": "one two three", "parameters": {"max_tokens": 2}}
        assert client.post("/v2/models/echo/generate", json=body).status_code == 200
        sampled = {"text_input": "one two", "parameters": {"temperature": 0.7}}
        assert client.post("/v2/models/echo/generate", json=sampled).status_code == 200
        with client.stream("POST", "/v2/models/echo/generate_stream", json=body) as r:
            assert r.status_code == 200
            r.read()
        wait_compared(reg, 2)
        assert mirror_value(reg, "model_server_mirror_requests_total", outcome="sent") == 2
        assert mirror_value(reg, "model_server_mirror_agreement_sum") == 2.0


def test_a_candidate_refusing_the_request_counts_failed_and_the_answer_is_unchanged(
    tmp_path: Path,
) -> None:
    (tmp_path / "tokens").write_text("another-token\n")
    with (
        candidate(EchoBackend(), tmp_path / "tokens") as cand,  # our caller's token is unknown
        serve_app(EchoBackend(), **mirrored(cand.url)) as (client, _, reg),
    ):
        r = client.post("/v2/models/echo/infer", json=ROW)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
        deadline = time.monotonic() + 10
        while mirror_value(reg, "model_server_mirror_requests_total", outcome="failed") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert mirror_value(reg, "model_server_mirror_requests_total", outcome="compared") == 0


def test_over_tls_the_candidate_must_present_the_shared_certificate(tmp_path: Path) -> None:
    """One TLS Secret serves every variant: the candidate's certificate is checked against
    the stable server's own; a candidate with another certificate is a failure."""
    shared = write_tls_secret(tmp_path / "shared")
    other = write_tls_secret(tmp_path / "other")
    own = {"tls_cert_file": shared / "tls.crt", "tls_key_file": shared / "tls.key"}
    for secret, outcome in ((shared, "compared"), (other, "failed")):
        with (
            candidate(EchoBackend(), tls=secret) as cand,
            serve_app(EchoBackend(), **mirrored(cand.url, "https"), **own) as (client, _, reg),
        ):
            assert client.post("/v2/models/echo/infer", json=ROW).status_code == 200
            deadline = time.monotonic() + 10
            while mirror_value(reg, "model_server_mirror_requests_total", outcome=outcome) < 1:
                assert time.monotonic() < deadline, outcome
                time.sleep(0.01)


def test_sampling_and_a_full_queue_on_the_request_path() -> None:
    """The decision and the enqueue, without workers: the queue of 2 fills, the rest drops."""
    registry = CollectorRegistry()
    draws = iter([0.05, 0.5, 0.05, 0.05, 0.05])
    mirror = Mirror(url="http://127.0.0.1:9", model_name="echo", percent=10, queue_size=2,
                    timeout_s=1, metrics=MirrorMetrics(registry, "echo", "int8", "cand"),
                    random_draw=lambda: next(draws))  # fmt: skip
    mirror._open = True  # taking requests, workers not started
    request = InferRequest({"x": np.zeros((1, 4), np.float32)})
    for _ in range(5):
        mirror.offer_infer(request, {"y": np.zeros((1, 4), np.float32)})
    # draws under 0.10 are sampled: 4 of 5; two fit in the queue, two are dropped
    assert mirror._queue.qsize() == 2
    assert mirror_value(registry, "model_server_mirror_requests_total", outcome="dropped") == 2


def test_stop_returns_promptly_with_requests_queued_for_a_silent_candidate() -> None:
    import socket

    registry = CollectorRegistry()

    async def run(port: int) -> Mirror:
        mirror = Mirror(url=f"http://127.0.0.1:{port}", model_name="echo", percent=100,
                        queue_size=8, timeout_s=60,
                        metrics=MirrorMetrics(registry, "echo", "int8", "cand"))  # fmt: skip
        mirror.start(None)
        for _ in range(8):
            mirror.offer_infer(InferRequest({"x": np.zeros((1, 4), np.float32)}),
                               {"y": np.zeros((1, 4), np.float32)})  # fmt: skip
        while mirror_value(registry, "model_server_mirror_requests_total", outcome="sent") < 4:
            await asyncio.sleep(0.01)  # every worker waits for the silent candidate
        await mirror.stop()  # bounded by STOP_SECONDS, not the 60 s request timeout
        mirror.offer_infer(InferRequest({"x": np.zeros((1, 4), np.float32)}), {})
        return mirror

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        mirror = asyncio.run(asyncio.wait_for(run(silent.getsockname()[1]), 30))
    assert mirror._workers == [] and mirror._client is None
    assert mirror_value(registry, "model_server_mirror_requests_total", outcome="sent") == 4
    assert mirror._queue.qsize() == 4  # never sent; nothing taken after stop


# comparators ------------------------------------------------------------------------------
def test_classification_compares_top_labels_row_by_row() -> None:
    mine = {"label": np.array([b"POS", b"NEG", b"POS"], dtype=object),
            "logits": np.array([[0, 1], [1, 0], [0, 1]], np.float32)}  # fmt: skip
    same_labels = {"label": np.array([b"POS", b"NEG", b"NEG"], dtype=object)}
    assert classification_agreement(mine, same_labels) == [1.0, 1.0, 0.0]
    logits_only = {"logits": np.array([[0.2, 0.9], [0.3, 0.1], [0.5, 0.4]], np.float32)}
    assert classification_agreement({"logits": mine["logits"]}, logits_only) == [1.0, 1.0, 0.0]
    assert classification_agreement(mine, {"label": np.array([b"POS"], dtype=object)}) == [0.0] * 3
    with pytest.raises(ValueError):
        classification_agreement({"score": np.array([0.5], np.float32)}, same_labels)


def test_generation_compares_tokens_position_by_position() -> None:
    assert token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_agreement([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75
    assert token_agreement([1, 2, 3, 4], [1, 2]) == 0.5  # stopped early
    assert token_agreement([1, 2], [2, 1, 5, 6]) == 0.0
    assert token_agreement([], []) == 1.0


def test_tensors_agree_within_the_documented_tolerance() -> None:
    ref = np.array([1.0, 100.0, 0.0, -5.0], np.float32)
    inside = ref + np.array([RTOL * 0.9, 100 * RTOL * 0.9, ATOL * 0.9, -5 * RTOL * 0.9])
    outside = ref + np.array([2 * RTOL + ATOL, 0, 2 * ATOL, 0])
    assert tensor_agreement({"y": ref}, {"y": inside.astype(np.float32)}) == 1.0
    assert tensor_agreement({"y": ref}, {"y": outside.astype(np.float32)}) == 0.5
    assert tensor_agreement({"y": ref}, {"y": ref[:2]}) == 0.0  # another shape
    assert tensor_agreement({"y": ref, "n": np.array([b"a"], dtype=object)}, {"y": ref}) == 0.8


def test_infer_on_a_generator_compares_each_rows_text_by_tokens() -> None:
    metrics = MirrorMetrics(CollectorRegistry(), "e", "s", "c")
    mirror = Mirror(url="http://127.0.0.1:9", model_name="echo", percent=100, queue_size=1,
                    timeout_s=1, metrics=metrics)  # fmt: skip
    mirror.kind = "generation"
    mine = {"text_output": np.array([b"a b c", b"x y"], dtype=object)}
    theirs = {"text_output": np.array([b"a q c", b"x y"], dtype=object)}
    assert mirror._score_infer(mine, theirs) == [2 / 3, 1.0]
    assert mirror._score_infer(mine, {"text_output": mine["text_output"][:1]}) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("task", "kind"),
    [("text-classification", "classification"), ("image-classification", "classification"),
     ("text-generation", "generation"), (None, "tensors")],
)  # fmt: skip
def test_the_task_picks_the_comparator(task: str | None, kind: str) -> None:
    assert comparison_kind(task) == kind


@pytest.mark.parametrize(
    ("params", "greedy"),
    [({}, True), ({"temperature": 0}, True), ({"max_tokens": 3}, True),
     ({"temperature": 0.7}, False), ({"do_sample": True}, False),
     ({"do_sample": False, "temperature": 0.7}, True)],
)  # fmt: skip
def test_only_greedy_generations_are_queued_by_the_generation_rules(
    params: dict[str, object], greedy: bool
) -> None:
    mirror = Mirror(url="http://127.0.0.1:9", model_name="echo", percent=100, queue_size=2,
                    timeout_s=1, metrics=MirrorMetrics(CollectorRegistry(), "echo", "int8", "c"),
                    random_draw=lambda: 0.0)  # fmt: skip
    mirror._open = True  # taking requests, workers not started
    request = GenerationRequest.from_parameters("one two", params)
    answer = Generation("one two", sampling(request), lambda text: None)
    answer.pieces.append("three")
    mirror.offer_generate(answer, request)
    assert mirror._queue.qsize() == int(greedy)
    if greedy:  # sent on as the client's generate-extension parameters
        assert mirror._queue.get_nowait()[1:4] == ("one two", params, "three")


# what the mirror sends and reads ----------------------------------------------------------
def test_the_sent_request_decodes_to_the_same_tensors_on_the_candidate() -> None:
    inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
              "text": np.array([b"a \xff", b""], dtype=object),
              "n": np.array([1, -2], np.int64)}  # fmt: skip
    body, header_length = encode_request(inputs, ["y", "z"])
    decoded = decode_json(body, str(header_length))
    assert decoded.outputs == ["y", "z"] and decoded.binary_outputs == {"y", "z"}
    for name, arr in inputs.items():
        assert decoded.inputs[name].dtype == arr.dtype
        np.testing.assert_array_equal(decoded.inputs[name], arr)


@pytest.mark.parametrize("binary", [False, True])
def test_a_candidate_answer_decodes_to_its_outputs(binary: bool) -> None:
    outputs = {"y": np.array([[0.1, 0.2]], np.float32), "label": np.array([b"POS"], dtype=object)}
    request = InferRequest({}, all_binary=binary)
    body, extra = encode_json("m", "1", outputs, request, "int8")
    decoded = decode_response(body, (extra or {}).get("Inference-Header-Content-Length"))
    np.testing.assert_array_equal(decoded["y"], outputs["y"])
    assert decoded["label"].tolist() == [b"POS"]


# settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "needle"),
    [({"MODEL_SERVER_MIRROR_URL": "ftp://x", "MODEL_SERVER_MIRROR_VARIANT": "c"},
      "MODEL_SERVER_MIRROR_URL: must be http(s)://host[:port]"),
     ({"MODEL_SERVER_MIRROR_URL": "http://x/v2", "MODEL_SERVER_MIRROR_VARIANT": "c"},
      "without a path"),
     ({"MODEL_SERVER_MIRROR_URL": "http://10.96.3.7:80"}, "MODEL_SERVER_MIRROR_VARIANT"),
     ({"MODEL_SERVER_MIRROR_PERCENT": "101"}, "MODEL_SERVER_MIRROR_PERCENT"),
     ({"MODEL_SERVER_MIRROR_QUEUE": "0"}, "MODEL_SERVER_MIRROR_QUEUE"),
     ({"MODEL_SERVER_MIRROR_TIMEOUT_SECONDS": "0"}, "MODEL_SERVER_MIRROR_TIMEOUT_SECONDS")],
)  # fmt: skip
def test_invalid_mirror_settings_refuse_to_start_with_one_line(
    env: dict[str, str], needle: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(tmp_path / "termination-log"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["serve"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


def test_mirror_settings_defaults_and_normalised_url() -> None:
    s = Settings()
    assert (s.mirror_url, s.mirror_percent, s.mirror_queue, s.mirror_timeout_seconds) == (
        None, 10.0, 64, 5.0)  # fmt: skip
    assert Settings(mirror_url="").mirror_url is None
    s = Settings(mirror_url="https://10.96.3.7:443/", mirror_variant="int8")
    assert s.mirror_url == "https://10.96.3.7:443"


def test_artifact_bytes_counts_every_file_of_the_model(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"y" * 1000)
    assert artifact_bytes(tmp_path) == 1010
    assert artifact_bytes(tmp_path / "config.json") == 10
    assert artifact_bytes(tmp_path / "missing") == 0


# ---- the mirror the pod's annotation names (mirror.control) -----------------------------


def annotations_file(path: Path, **annotations: str) -> None:
    """Write `path` as the kubelet writes the downward API's annotations (atomically, one
    `key="value"` line each, Go-quoted)."""
    lines = [f"{k}={json.dumps(v)}" for k, v in sorted(annotations.items())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def test_reading_the_downward_api_annotations_file() -> None:
    text = (
        'kubectl.kubernetes.io/restartedAt="2026-12-01T03:00:00Z"\n'
        'serving.modelservice.dev/mirror="{\\"url\\":\\"http://10.96.0.7:80\\",'
        '\\"percent\\":20,\\"variant\\":\\"int8\\"}"\n'
        'odd="\\x01"\n'
        "not a line\n"
    )
    got = read_annotations(text)
    assert got == {
        "kubectl.kubernetes.io/restartedAt": "2026-12-01T03:00:00Z",
        ANNOTATION: '{"url":"http://10.96.0.7:80","percent":20,"variant":"int8"}',
    }
    target = parse_target(got[ANNOTATION], mirror_base_url)
    assert target == MirrorTarget("http://10.96.0.7:80", 20.0, "int8")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nope", "is not JSON"),
        ("[1]", "JSON object"),
        ('{"percent": 20, "variant": "x"}', "needs url"),
        ('{"url": "http://a:80", "percent": 0, "variant": "x"}', "needs percent"),
        ('{"url": "http://a:80", "percent": true, "variant": "x"}', "needs percent"),
        ('{"url": "http://a:80", "percent": 10, "variant": "a b"}', "needs variant"),
        ('{"url": "ftp://a", "percent": 10, "variant": "x"}', "http(s)://host"),
        ('{"url": "http://a:80/path", "percent": 10, "variant": "x"}', "without a path"),
    ],
)
def test_a_malformed_mirror_annotation_names_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_target(value, mirror_base_url)


def test_settings_take_a_fixed_mirror_or_the_annotation_file_not_both(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Settings(mirror_file=tmp_path / "annotations", **mirrored("127.0.0.1:9"))
    assert Settings(mirror_file="").mirror_file is None


def test_the_annotation_turns_mirroring_on_retargets_and_off_without_a_restart(
    tmp_path: Path,
) -> None:
    """One running stable server, its annotations file rewritten as the kubelet does: the
    mirror follows it (on, to another candidate, a malformed value, off), and requests are
    answered throughout."""
    path = tmp_path / "annotations"
    fast = {"mirror_file": path, "mirror_file_interval_seconds": 0.05}
    with (
        candidate(EchoBackend()) as same,
        candidate(ScaledEcho()) as other,
        serve_app(EchoBackend(), **fast) as (client, _, reg),
    ):
        state: Any = client.app.state  # type: ignore[attr-defined]

        def infer_until(outcome: str, n: float, target: str = "cand") -> None:
            deadline = time.monotonic() + 10
            while mirror_value(reg, "model_server_mirror_requests_total", outcome=outcome,
                               target=target) < n:  # fmt: skip
                assert client.post("/v2/models/echo/infer", json=ROW).status_code == 200
                assert time.monotonic() < deadline, (outcome, target, state.mirror_control.target)
                time.sleep(0.02)

        # no file yet: no mirror, answers as usual
        assert client.post("/v2/models/echo/infer", json=ROW).status_code == 200
        assert state.dataplane.mirror is None
        annotations_file(path, **{ANNOTATION: json.dumps(
            {"url": f"http://{same.url}", "percent": 100, "variant": "cand"})})  # fmt: skip
        infer_until("compared", 2)
        assert mirror_value(reg, "model_server_mirror_agreement_sum") == pytest.approx(
            mirror_value(reg, "model_server_mirror_agreement_count"))  # fmt: skip

        # retargeted: the next comparisons are the other candidate's, under its name
        annotations_file(path, other="x", **{ANNOTATION: json.dumps(
            {"url": f"http://{other.url}", "percent": 100, "variant": "int8-b"})})  # fmt: skip
        infer_until("compared", 1, target="int8-b")
        assert state.mirror_control.target.variant == "int8-b"

        # a malformed value is ignored (no mirror), the file's removal keeps it off
        annotations_file(path, **{ANNOTATION: "{broken"})
        deadline = time.monotonic() + 10
        while state.dataplane.mirror is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        path.unlink()
        sent = mirror_value(reg, "model_server_mirror_requests_total", outcome="sent",
                            target="int8-b")  # fmt: skip
        for _ in range(5):
            assert client.post("/v2/models/echo/infer", json=ROW).status_code == 200
        assert state.dataplane.mirror is None
        assert mirror_value(reg, "model_server_mirror_requests_total", outcome="sent",
                            target="int8-b") == sent  # fmt: skip
