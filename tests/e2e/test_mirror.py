"""Mirroring between two real `model-server serve` processes on loopback.

The stable server mirrors to a candidate server (MODEL_SERVER_MIRROR_URL) and its
/metrics must tell what happened: agreement 1.0 against the same model, the measured share
of equal labels against a differently-initialised one, `failed` while the candidate is
down (with every primary answer still 200), `dropped` when the queue is full; REST, gRPC
and the OpenAI routes are all mirrored, with the caller's token.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_model_server_process import REPO, free_port, model_server
from waiting import wait_for

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOKEN = "mirror-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTENCES = [
    f"{a} {b} {c}"
    for a in ("a good", "the terrible", "my happy", "an awful", "this great", "one sad")
    for b in ("movie", "food", "service", "day", "song")
    for c in ("today", "again", "indeed")
]


def _factory() -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    import modelfactory

    return modelfactory


def mirror_metrics(url: str) -> dict[str, float]:
    """outcome -> count, plus agreement_sum / agreement_count, from the stable /metrics."""
    text = httpx.get(f"http://{url}/metrics", headers=AUTH, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "model_server_mirror_requests_total":
                out[sample.labels["outcome"]] = sample.value
                assert sample.labels["target"] == "candidate", sample.labels
                assert sample.labels["variant"] == "stable", sample.labels
            elif sample.name == "model_server_mirror_agreement_sum":
                out["agreement_sum"] = sample.value
            elif sample.name == "model_server_mirror_agreement_count":
                out["agreement_count"] = sample.value
    return out


def metrics_when(url: str, done: Callable[[dict[str, float]], bool],
                 timeout_s: float = 60) -> dict[str, float]:
    """The stable /metrics (``mirror_metrics``) once `done(metrics)`."""
    return wait_for("the mirror metrics to get there", lambda: mirror_metrics(url),
                    timeout=timeout_s, interval=0.1, until=done)


def _infer_body(sentence: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentence]}]}


def _labels(url: str, sentences: list[str]) -> list[str]:
    """One REST infer per sentence; every answer must be 200."""
    labels = []
    with httpx.Client(base_url=f"http://{url}", headers=AUTH, timeout=30) as client:
        for sentence in sentences:
            r = client.post("/v2/models/model/infer", json=_infer_body(sentence))
            assert r.status_code == 200, r.text
            (label,) = [o for o in r.json()["outputs"] if o["name"] == "label"]
            labels.append(label["data"][0])
    return labels


def _grpc_infer(port: int, sentences: list[str]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        for sentence in sentences:
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([sentence.encode()], dtype=object))
            result = client.infer("model", [text], headers={"authorization": AUTH["Authorization"]})
            assert result.as_numpy("label") is not None
    finally:
        client.close()


def _wait_ready(url: str) -> None:
    meta = wait_for("the model to load", lambda: httpx.get(
        f"http://{url}/v2/models/model", headers=AUTH, timeout=10).json(), timeout=120,
        interval=0.1, until=lambda meta: meta["parameters"]["state"] != "loading")
    assert meta["parameters"]["state"] == "ready", meta
    assert meta["parameters"]["parameters"] > 0, meta  # the per-variant table's figures
    assert meta["parameters"]["artifact_bytes"] > meta["parameters"]["parameters"], meta


def test_classifier_mirror_agreement_candidate_down_and_grpc(tmp_path: Path) -> None:
    factory = _factory()
    same, other = tmp_path / "same", tmp_path / "other"
    factory.make_trained_text_classifier(same)  # its labels follow the sentences
    factory.make_text_classifier(other, seed=2)  # random: one label for everything
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    candidate_port, grpc_port = free_port(), free_port()
    common = ("--task", "text-classification", "--auth-tokens", str(tmp_path / "tokens"),
              "--no-auth-metrics")  # fmt: skip
    env = {
        "MODEL_SERVER_MIRROR_URL": f"http://127.0.0.1:{candidate_port}",
        "MODEL_SERVER_MIRROR_PERCENT": "100",
        "MODEL_SERVER_MIRROR_VARIANT": "candidate",
    }
    stable_flags = ("--model-dir", str(same), "--variant", "stable",
                    "--grpc-port", str(grpc_port), *common)  # fmt: skip
    with model_server(*stable_flags, env=env) as stable:
        _wait_ready(stable)
        # the same model as candidate: every label agrees, on REST and gRPC traffic
        with model_server(
            "--model-dir", str(same), "--variant", "candidate", *common, port=candidate_port
        ) as candidate:
            assert candidate.endswith(f":{candidate_port}")
            _wait_ready(candidate)
            _labels(stable, SENTENCES[:10])
            _grpc_infer(grpc_port, SENTENCES[10:15])
            m = metrics_when(stable, lambda m: m.get("compared", 0) >= 15)
            assert m["compared"] == 15 and m["sent"] == 15, m
            assert m.get("failed", 0) == 0 and m.get("dropped", 0) == 0, m
            assert m["agreement_count"] == 15 and m["agreement_sum"] == 15, m
        # the candidate is down: the stable answers all succeed, `failed` counts up
        before = mirror_metrics(stable)
        _labels(stable, SENTENCES[:10])
        m = metrics_when(stable, lambda m: m["failed"] >= before["failed"] + 10)
        assert m["failed"] == before["failed"] + 10, m
        assert m["compared"] == before["compared"], m
        # a differently-initialised candidate: agreement is the share of equal labels
        with model_server(
            "--model-dir", str(other), "--variant", "candidate", *common, port=candidate_port
        ) as candidate:
            _wait_ready(candidate)
            before = mirror_metrics(stable)
            mine = _labels(stable, SENTENCES)
            theirs = _labels(candidate, SENTENCES)
            expected = sum(a == b for a, b in zip(mine, theirs, strict=True))
            assert 0 < expected < len(SENTENCES), (mine, theirs)
            m = metrics_when(stable, lambda m: m["compared"] >= before["compared"] + len(SENTENCES))
            assert m["agreement_count"] - before["agreement_count"] == len(SENTENCES), m
            assert m["agreement_sum"] - before["agreement_sum"] == expected, (m, expected)


def test_generator_mirror_covers_generate_stream_and_openai(tmp_path: Path) -> None:
    import openai

    factory = _factory()
    model_dir = tmp_path / "gpt"
    factory.make_text_generator(model_dir)
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    port = free_port()
    common = ("--model-dir", str(model_dir), "--task", "text-generation",
              "--auth-tokens", str(tmp_path / "tokens"), "--no-auth-metrics")  # fmt: skip
    env = {
        "MODEL_SERVER_MIRROR_URL": f"http://127.0.0.1:{port}",
        "MODEL_SERVER_MIRROR_PERCENT": "100",
        "MODEL_SERVER_MIRROR_VARIANT": "candidate",
    }
    with (
        model_server("--variant", "candidate", *common, port=port),
        model_server("--variant", "stable", *common, env=env) as stable,
    ):
        _wait_ready(f"127.0.0.1:{port}")
        _wait_ready(stable)
        with httpx.Client(base_url=f"http://{stable}", headers=AUTH, timeout=60) as client:
            r = client.post(
                "/v2/models/model/generate",
                json={"text_input": "hello world", "parameters": {"max_tokens": 5}},
            )
            assert r.status_code == 200, r.text
            with client.stream(
                "POST",
                "/v2/models/model/generate_stream",
                json={"text_input": "good day", "max_tokens": 4},
            ) as stream:
                assert stream.status_code == 200
                assert [x for x in stream.iter_lines() if x.startswith("data: ")]
            # sampled generation says nothing about agreement: not mirrored
            r = client.post(
                "/v2/models/model/generate",
                json={"text_input": "hello", "parameters": {"max_tokens": 3, "temperature": 0.8}},
            )
            assert r.status_code == 200, r.text
        oai = openai.OpenAI(base_url=f"http://{stable}/v1", api_key=TOKEN, max_retries=0)
        oai.completions.create(model="model", prompt="the movie", max_tokens=4, temperature=0)
        oai.chat.completions.create(
            model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        m = metrics_when(stable, lambda m: m.get("compared", 0) >= 4)
        time.sleep(0.5)  # nothing else may arrive: the sampled request was not mirrored
        m = mirror_metrics(stable)
        assert m["sent"] == 4 and m["compared"] == 4, m
        assert m["agreement_count"] == 4 and m["agreement_sum"] == 4, m


def test_a_full_queue_drops_and_primary_answers_never_wait(tmp_path: Path) -> None:
    """The candidate accepts connections and never answers: 4 workers wait, the queue of 1
    fills, the rest is dropped; the stable server answers every request meanwhile. SIGTERM
    with mirrored requests still hanging: the process ends cleanly, exit 0 (how long the
    mirror's stop may take is bounded by STOP_SECONDS: tests/unit/server/test_mirror.py)."""
    import signal
    import subprocess

    from test_model_server_process import _output, _spawn, _wait_live

    factory = _factory()
    model_dir = tmp_path / "sentiment"
    factory.make_text_classifier(model_dir)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {
            "MODEL_SERVER_MIRROR_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "MODEL_SERVER_MIRROR_PERCENT": "100",
            "MODEL_SERVER_MIRROR_VARIANT": "candidate",
            "MODEL_SERVER_MIRROR_QUEUE": "1",
            "MODEL_SERVER_MIRROR_TIMEOUT_SECONDS": "3",
        }
        proc, stable, log = _spawn(
            "--model-dir", str(model_dir), "--task", "text-classification", "--variant", "stable",
            "--drain-seconds", "0", env=env,
        )  # fmt: skip
        try:
            _wait_live(proc, stable, log)
            _wait_ready(stable)
            _labels(stable, SENTENCES[:20])
            m = mirror_metrics(stable)
            # 4 in flight to the silent candidate, 1 queued, 15 dropped
            assert m["dropped"] == 15, m
            assert m["sent"] == 4, m
            m = metrics_when(stable, lambda m: m["failed"] >= 5, timeout_s=30)
            assert m["failed"] == 5 and m.get("compared", 0) == 0, m
            # hanging again (the timeout restarts per request), then SIGTERM
            _labels(stable, SENTENCES[:5])
            metrics_when(stable, lambda m: m["sent"] >= 9)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"no exit after SIGTERM:\n{_output(log)}") from None
            assert code == 0, _output(log)
        finally:
            proc.kill()
            proc.wait()
            log.close()
