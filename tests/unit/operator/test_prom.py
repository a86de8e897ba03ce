"""The Prometheus client and analyzer against an HTTP server on loopback that answers like
Prometheus's /api/v1/query (recorded answer shapes), and against a closed port."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from msv_operator import prom

Answer = Callable[[str], tuple[int, dict[str, Any]]]


def vector(*items: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": m, "value": [1764500000.0, v]} for m, v in items]}}


@pytest.fixture
def server() -> Iterator[tuple[str, list[str], list[Answer]]]:
    seen: list[str] = []
    answers: list[Answer] = [lambda q: (200, vector())]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlparse(self.path)
            assert parsed.path == "/api/v1/query"
            query = urllib.parse.parse_qs(parsed.query)["query"][0]
            seen.append(query)
            code, body = answers[0](query)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen, answers
    httpd.shutdown()
    httpd.server_close()


def recorded(query: str) -> tuple[int, dict[str, Any]]:
    """Answers shaped like a real Prometheus for a baseline/int8 rollout."""
    if query.startswith("histogram_quantile"):
        return 200, vector(({"variant": "baseline"}, "0.010"), ({"variant": "int8"}, "0.012"))
    if "status=~" in query:
        return 200, vector(({"variant": "int8"}, "0.05"))
    if query.startswith("sum by (target) (increase(model_server_mirror_agreement_count"):
        return 200, vector(({"target": "int8"}, "240.6"))  # increase() extrapolates
    if "increase(" in query:
        return 200, vector(({"variant": "int8"}, "120"), ({"variant": "baseline"}, "900"))
    if "sum by (variant) (rate(model_server_requests_total" in query:
        return 200, vector(({"variant": "baseline"}, "9"), ({"variant": "int8"}, "1"))
    if "mirror_agreement" in query:
        return 200, vector(({"target": "int8"}, "0.995"))
    if "model_parameters" in query:
        return 200, vector(({"variant": "int8"}, "4386"), ({"variant": "baseline"}, "4386"))
    if "model_size_bytes" in query:
        return 200, vector(({"variant": "int8"}, "5000"), ({"variant": "baseline"}, "17544"))
    if "gpu_memory_peak_bytes" in query:  # CUDA pods only: the int8 variant here
        return 200, vector(({"variant": "int8"}, "16106127360"))
    return 200, vector()


def test_analyzer_turns_answers_into_a_sample(server: tuple[str, list[str], list[Answer]]
                                              ) -> None:
    url, seen, answers = server
    answers[0] = recorded
    analyzer = prom.PrometheusAnalyzer(prom.Prometheus(url, timeout=2))
    sample = analyzer.sample("ml", "sentiment", ["baseline", "int8"], 60, 95.4)
    assert sample.error is None
    int8, base = sample.variants["int8"], sample.variants["baseline"]
    assert int8.p95_ms == pytest.approx(12.0) and base.p95_ms == pytest.approx(10.0)
    assert int8.error_rate == pytest.approx(0.05) and base.error_rate == 0.0
    assert int8.agreement == pytest.approx(0.995) and base.agreement is None
    # the comparisons behind the agreement, over the same window, for its confidence bound
    assert int8.agreement_samples == pytest.approx(240.6) and base.agreement_samples is None
    assert any(q.startswith("sum by (target) (increase(model_server_mirror_agreement_count{")
               and q.endswith("[60s]))") for q in seen)
    assert int8.size_bytes == 5000 and int8.parameters == 4386
    assert int8.gpu_memory_bytes == 15 * 2**30 and base.gpu_memory_bytes is None
    assert any(q.startswith("max by (variant) (model_server_gpu_memory_peak_bytes{") for q in seen)
    assert sample.step_requests == {"baseline": 900.0, "int8": 120.0}
    # every query is scoped to the ModelService's namespace and model label
    assert all('namespace="ml",model="sentiment"' in q for q in seen)
    assert any("[60s]" in q for q in seen) and any("increase(" in q and "[95s]" in q
                                                   for q in seen)
    assert prom.measured_fields(int8) == {"p95Ms": 12.0, "rps": 1.0, "errorRate": 0.05,
                                          "agreement": 0.995, "parameters": 4386,
                                          "sizeBytes": 5000,
                                          "gpuMemory": {"measuredBytes": 15 * 2**30}}
    assert "gpuMemory" not in prom.measured_fields(base)


def test_no_step_query_outside_a_rollout(server: tuple[str, list[str], list[Answer]]) -> None:
    url, seen, _ = server
    sample = prom.PrometheusAnalyzer(prom.Prometheus(url)).sample("ml", "m", ["a"], 60, None)
    assert sample.error is None and sample.step_requests == {"a": 0.0}
    assert not any(f"increase({prom.REQUESTS}" in q for q in seen)  # no step query
    assert sample.variants["a"] == prom.VariantMetrics()


def test_label_values_are_escaped(server: tuple[str, list[str], list[Answer]]) -> None:
    url, seen, _ = server
    prom.Prometheus(url).query('up{job="' + prom._label('a"b') + '"}')
    assert seen == ['up{job="a\\"b"}']


def test_bad_query_is_a_typed_error_with_prometheus_message(
        server: tuple[str, list[str], list[Answer]]) -> None:
    url, _, answers = server
    answers[0] = lambda q: (400, {"status": "error", "errorType": "bad_data",
                                  "error": "parse error at char 5"})
    with pytest.raises(prom.PrometheusError, match="HTTP 400: parse error at char 5"):
        prom.Prometheus(url).query("sum(")
    answers[0] = lambda q: (200, {"status": "success",
                                  "data": {"resultType": "matrix", "result": []}})
    with pytest.raises(prom.PrometheusError, match="expected a vector"):
        prom.Prometheus(url).query("x[1m]")


def test_nan_values_are_no_data(server: tuple[str, list[str], list[Answer]]) -> None:
    url, _, answers = server
    answers[0] = lambda q: (200, vector(({"variant": "a"}, "NaN"), ({"variant": "b"}, "1")))
    assert prom.Prometheus(url).by("q", "variant") == {"b": 1.0}


def test_unreachable_prometheus_becomes_the_sample_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on port any more
    analyzer = prom.PrometheusAnalyzer(prom.Prometheus(f"http://127.0.0.1:{port}", timeout=2))
    sample = analyzer.sample("ml", "m", ["a"], 60, 10)
    assert sample.error is not None and "unreachable" in sample.error
    assert sample.variants == {}


def test_answers_that_are_not_prometheus_json_are_typed_errors(
        server: tuple[str, list[str], list[Answer]]) -> None:
    url, _, answers = server
    answers[0] = lambda q: (200, ["not", "an", "object"])  # type: ignore[return-value,list-item]
    with pytest.raises(prom.PrometheusError, match="refused the query"):
        prom.Prometheus(url).query("up")
    answers[0] = lambda q: (200, {"status": "success", "data": "garbage"})
    with pytest.raises(prom.PrometheusError, match="expected a vector"):
        prom.Prometheus(url).query("up")
