"""The rollout analysis's PromQL against a real Prometheus on loopback.

A Prometheus process (the one `localcluster build` makes from Go modules; skipped when it is
not built) scrapes two exporters on loopback that record with the model server's own
collectors (`model_server.metrics.ServerMetrics`, the mirror's `MirrorMetrics` among them),
labelled with a namespace the way a ServiceMonitor scrape labels them. The operator's
`PrometheusAnalyzer` must read p95 latency, error rate, agreement, request counts and model
size back exactly as recorded, and the rollout gates must judge them.
"""

from __future__ import annotations

import math
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import manifests
import pytest
from msv_operator import prom, rollout
from msv_operator.spec import parse_spec
from prometheus_client import CollectorRegistry, start_http_server
from waiting import wait_for

from localcluster import paths
from localcluster.ports import free_port
from model_server.metrics import ServerMetrics

pytestmark = pytest.mark.slow

NAMESPACE, MODEL = "ml", "sentiment"


def prometheus_binary() -> Path | None:
    found = sorted(paths.bin_root().glob("prometheus-v*/prometheus"))
    return found[-1] if found else None


class Exporters:
    """baseline and int8 model-server metrics, fed at a steady rate by a thread."""

    def __init__(self) -> None:
        self.registries = {v: CollectorRegistry() for v in ("baseline", "int8")}
        self.metrics = {v: ServerMetrics(r, MODEL, v, process_metrics=False)
                        for v, r in self.registries.items()}
        for v, size in (("baseline", 17544), ("int8", 6000)):
            self.metrics[v].set_model_info(framework="transformers", device="cpu",
                                           quantization="none", pruning_method="none",
                                           sparsity=0.0, parameters=4386, size_bytes=size)
        # the mirror's collectors, as the stable variant's server exports them
        self.agreement = self.metrics["baseline"].mirror("int8").agreement
        self.servers = [start_http_server(0, "127.0.0.1", r) for r in self.registries.values()]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.feed, daemon=True)

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{server.server_port}" for server, _ in self.servers]

    def tick(self) -> None:
        base, int8 = self.metrics["baseline"].hot, self.metrics["int8"].hot
        int8.observe("infer", 500, 0.008)
        for _ in range(9):
            int8.observe("infer", 200, 0.008)
        for _ in range(10):
            base.observe("infer", 200, 0.004)
        for _ in range(49):
            self.agreement.observe(1.0)
        self.agreement.observe(0.0)

    def feed(self) -> None:
        while not self.stop.wait(0.1):
            self.tick()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for server, thread in self.servers:
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Exporters]]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no Prometheus built (python -m localcluster build)")
    exporters = Exporters()
    exporters.thread.start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: model-server\n"
        "    static_configs:\n"
        f"      - targets: {exporters.targets}\n"
        f"        labels: {{namespace: {NAMESPACE}}}\n")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", exporters
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        exporters.close()


def test_analysis_reads_back_what_the_servers_recorded_and_the_gates_judge_it(
        prometheus: tuple[str, Exporters]) -> None:
    url, _ = prometheus
    client = prom.Prometheus(url, timeout=5)
    analyzer = prom.PrometheusAnalyzer(client)

    def complete() -> rollout.Sample | None:
        try:
            if len(client.query('up{job="model-server"} == 1')) < 2:
                return None
        except prom.PrometheusError:
            return None  # still starting
        s = analyzer.sample(NAMESPACE, MODEL, ["baseline", "int8"], 10, 10)
        ready = s.error is None and all(
            m.p95_ms is not None and m.rps for m in s.variants.values()) \
            and s.variants["int8"].agreement is not None \
            and (s.variants["int8"].agreement_samples or 0) >= 2000  # enough to decide
        return s if ready else None

    sample = wait_for("Prometheus to have scrapes of both targets and 2,000 comparisons",
                      complete, timeout=90, interval=0.5)

    base, int8 = sample.variants["baseline"], sample.variants["int8"]
    # every observation in one bucket: histogram_quantile interpolates to 95% of the bucket
    assert base.p95_ms == pytest.approx(2.5 + 0.95 * 2.5, rel=1e-6)   # (2.5 ms, 5 ms]
    assert int8.p95_ms == pytest.approx(5.0 + 0.95 * 5.0, rel=1e-6)   # (5 ms, 10 ms]
    assert int8.error_rate == pytest.approx(0.1, abs=0.02)
    assert base.error_rate == 0.0
    assert int8.agreement == pytest.approx(0.98, abs=0.005)
    assert base.agreement is None
    # 50 comparisons every 0.1 s: at most about 5,000 in the 10 s window (increase()
    # extrapolates, and the window may still be filling)
    assert 2000 <= (int8.agreement_samples or 0) <= 5000 * 1.3
    assert base.agreement_samples is None
    assert int8.size_bytes == 6000 and base.size_bytes == 17544 and int8.parameters == 4386
    assert (int8.rps or 0) > 0 and (base.rps or 0) > 0  # rate() extrapolates: no exact value
    assert sample.step_requests["int8"] > 0

    spec = parse_spec(manifests.modelservice(
        MODEL, NAMESPACE, model=manifests.model(uri="s3://m/x"),
        variants=[{"name": "baseline"}, {"name": "int8"}], traffic={"baseline": 100},
        rollout={"candidate": "int8", "minRequests": 1}))
    assert spec.rollout is not None
    verdict, gates, _ = rollout.evaluate(spec.rollout, sample, "baseline", 90, {})
    assert verdict == "Failed"
    by_name = {g.name: g for g in gates}
    assert by_name["latency"].value == pytest.approx(2.0, rel=1e-3)
    assert by_name["latency"].passed is False
    assert by_name["errorRate"].passed is False
    assert by_name["agreement"].passed is False
    # 0.98 over thousands of comparisons: the interval's high bound is below 0.99
    assert by_name["agreement"].samples == math.floor(int8.agreement_samples or 0)
    assert (by_name["agreement"].upper_bound or 1.0) < 0.99


def test_a_query_prometheus_refuses_is_a_typed_error(prometheus: tuple[str, Exporters]) -> None:
    url, _ = prometheus
    client = prom.Prometheus(url, timeout=5)

    def answers() -> bool:
        try:
            client.query("up")
        except prom.PrometheusError:
            return False
        return True

    wait_for("Prometheus to answer", answers, timeout=60, interval=0.3)
    with pytest.raises(prom.PrometheusError, match="HTTP 400"):
        client.query("sum(")
