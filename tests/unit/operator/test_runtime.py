"""The runtime around the pass: coalescing, requeue-after, backoff, resync, the index gate,
capability changes, metrics and Events. ``reconcile.reconcile`` is replaced by a scripted
pass and the API by a recorder; the work queue, workers and loops are the real ones."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from fakekube import FakeKube
from msv_operator import cache, conditions, kube, reconcile
from msv_operator.config import OperatorConfig
from msv_operator.metrics import OperatorMetrics
from msv_operator.runtime import Key, Runtime

from msv_contract.api import API_VERSION

A: Key = ("ml", "sentiment")
B: Key = ("ml", "summarizer")


def body(key: Key) -> dict[str, Any]:
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"namespace": key[0], "name": key[1], "uid": f"uid-{key[1]}"}}


Step = reconcile.Result | BaseException | Callable[[], reconcile.Result]


class ScriptedPass:
    """Stands in for ``reconcile.reconcile``: records each pass and answers from a script
    per ModelService (the last answer repeats; no script: an unchanged pass)."""

    def __init__(self) -> None:
        self.script: dict[Key, list[Step]] = {}
        self.passes: list[tuple[Key, float]] = []
        self.bodies: list[dict[str, Any]] = []
        self.observed: list[reconcile.Observed] = []
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def count(self, key: Key) -> int:
        return sum(1 for k, _ in self.passes if k == key)

    def __call__(self, ctx: reconcile.Context, ms: Mapping[str, Any],
                 observed: reconcile.Observed, now: str) -> reconcile.Result:
        key = (ms["metadata"]["namespace"], ms["metadata"]["name"])
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.passes.append((key, time.monotonic()))
            self.bodies.append(dict(ms))
            self.observed.append(observed)
            steps = self.script.get(key) or [reconcile.Result()]
            step = steps.pop(0) if len(steps) > 1 else steps[0]
        try:
            if isinstance(step, BaseException):
                raise step
            return step() if callable(step) else step
        finally:
            with self.lock:
                self.running -= 1


class Posted:
    """Records ``kube.post_event`` calls; reasons in ``fail`` raise an API error."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, Mapping[str, Any]]] = []
        self.fail: set[str] = set()

    def __call__(self, client: Any, involved: Mapping[str, Any], type_: str, reason: str,
                 message: str, now: str) -> None:
        if reason in self.fail:
            raise kube.Rejected(f"events is forbidden: {reason}", 403)
        self.events.append((type_, reason, message, now, involved))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedPass]:
    fake = ScriptedPass()
    monkeypatch.setattr(reconcile, "reconcile", fake)
    yield fake


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> Posted:
    fake = Posted()
    monkeypatch.setattr(kube, "post_event", fake)
    return fake


def make(**settings: Any) -> tuple[Runtime, FakeKube, OperatorMetrics]:
    config = OperatorConfig(**{"max_workers": 2, "resync_seconds": 3600.0,
                               "discovery_seconds": 3600.0, **settings})
    client = FakeKube()
    metrics = OperatorMetrics()
    rt = Runtime(config, metrics, client=client)
    return rt, client, metrics


def know(rt: Runtime, *keys: Key, owned: Mapping[Key, list[dict[str, Any]]] | None = None,
         pods: Mapping[Key, list[dict[str, Any]]] | None = None) -> None:
    """Fill the runtime's views of kopf's indexes (packed, as the handlers keep them)."""
    rt.bind({
        "msv_bodies": {k: [cache.pack(body(k))] for k in keys},
        "msv_owned": {k: [cache.pack(o) for o in v] for k, v in (owned or {}).items()},
        "msv_pods": {k: [cache.pack(p) for p in v] for k, v in (pods or {}).items()},
    })


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` (generous timeout: a loaded CI machine must not fail the test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def stop(rt: Runtime) -> None:
    """Stop the runtime once its workers are back in their wait; the timeout turns a worker
    that does not stop (see test_workqueue's cancellation test) into a failure."""
    await asyncio.sleep(0.05)
    await asyncio.wait_for(rt.stop(), 10)


def run(rt: Runtime, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        rt.start()
        try:
            await scenario()
        finally:
            await stop(rt)
    asyncio.run(main())


def metric(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def finished(metrics: OperatorMetrics) -> float:
    """Passes over, whatever their result (counted in the same step that queues a retry or
    a requeue, so what the queue holds then is what the pass left)."""
    return sum(metric(metrics, "msv_operator_reconciles_total", result=r)
               for r in ("applied", "unchanged", "invalid", "error"))


def test_a_burst_of_adds_is_one_pass_on_the_cached_objects(scripted: ScriptedPass) -> None:
    rt, client, metrics = make()
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "sentiment-baseline"}}
    pod = {"metadata": {"name": "sentiment-baseline-1"}}
    know(rt, A, B, owned={A: [deployment]}, pods={A: [pod]})
    scripted.script[A] = [reconcile.Result(applied=["Deployment sentiment-baseline",
                                                    "Service sentiment-baseline"],
                                           unchanged=2, pruned=["Service sentiment-int8"],
                                           status_written=True)]

    async def scenario() -> None:
        for _ in range(3):
            rt.enqueue(A)
        rt.enqueue(B)
        assert rt.queue is not None
        await until(lambda: finished(metrics) == 2)
        await asyncio.sleep(0.05)  # nothing else comes
        assert rt.queue is not None and len(rt.queue) == 0

    run(rt, scenario)
    assert scripted.count(A) == 1 and scripted.count(B) == 1
    first = scripted.bodies[[k for k, _ in scripted.passes].index(A)]
    seen = scripted.observed[[k for k, _ in scripted.passes].index(A)]
    assert first == body(A)
    assert seen.objects == [deployment] and seen.pods == [pod]
    assert metric(metrics, "msv_operator_reconciles_total", result="applied") == 1
    assert metric(metrics, "msv_operator_reconciles_total", result="unchanged") == 1
    assert metric(metrics, "msv_operator_applies_total", kind="Deployment") == 1
    assert metric(metrics, "msv_operator_applies_total", kind="Service") == 1
    assert metric(metrics, "msv_operator_apply_skipped_total", kind="any") == 2
    assert metric(metrics, "msv_operator_prunes_total", kind="Service") == 1
    assert metric(metrics, "msv_operator_status_writes_total") == 1
    assert metric(metrics, "msv_operator_reconcile_duration_seconds_count") == 2
    assert client.closed  # stop() closes the API facade


def test_a_key_added_during_its_pass_gets_exactly_one_more_pass_after_it(
        scripted: ScriptedPass) -> None:
    rt, _, _ = make(max_workers=4)
    know(rt, A)
    release = threading.Event()

    def slow() -> reconcile.Result:
        assert release.wait(5)
        return reconcile.Result()
    scripted.script[A] = [slow, reconcile.Result()]

    async def scenario() -> None:
        rt.enqueue(A)
        await until(lambda: scripted.count(A) == 1)
        for _ in range(3):  # events while the pass runs
            rt.enqueue(A)
        await asyncio.sleep(0.05)
        assert scripted.count(A) == 1  # never two passes of one key at once
        release.set()
        await until(lambda: scripted.count(A) == 2)
        await asyncio.sleep(0.05)

    run(rt, scenario)
    assert scripted.count(A) == 2
    assert scripted.most_at_once == 1


def test_requeue_after_brings_the_next_pass_when_it_is_due(scripted: ScriptedPass) -> None:
    rt, _, metrics = make()
    know(rt, A)
    scripted.script[A] = [reconcile.Result(requeue_after=0.2), reconcile.Result()]

    async def scenario() -> None:
        rt.enqueue(A)
        await until(lambda: finished(metrics) == 1)
        assert rt.queue is not None
        due = rt.queue.due_in(A)
        assert due is not None and 0.1 < due <= 0.2
        await until(lambda: finished(metrics) == 2)
        assert A not in rt.queue  # no requeue asked: nothing queued

    run(rt, scenario)
    (_, t1), (_, t2) = scripted.passes
    assert t2 - t1 >= 0.19


def test_errors_back_off_exponentially_until_a_pass_succeeds(
        scripted: ScriptedPass, caplog: pytest.LogCaptureFixture) -> None:
    rt, _, metrics = make()
    know(rt, A)
    scripted.script[A] = [kube.Conflict("the object has been modified", 409),
                          kube.Transient("etcdserver: request timed out", 504),
                          RuntimeError("a bug"),
                          reconcile.Result(),
                          kube.Conflict("the object has been modified", 409),
                          reconcile.Result()]
    waits: list[float] = []

    async def next_pass(n: int) -> None:
        """Make the queued retry due now (an event would do the same) and wait for it."""
        rt.enqueue(A)
        await until(lambda: finished(metrics) == n)
        assert rt.queue is not None
        due = rt.queue.due_in(A)
        waits.append(-1.0 if due is None else due)

    async def scenario() -> None:
        for n in range(1, 6):
            await next_pass(n)

    run(rt, scenario)
    # 1 s, 2 s, 4 s; a good pass queues nothing and the next failure starts again at 1 s
    assert [round(w) for w in waits] == [1, 2, 4, -1, 1]
    assert metric(metrics, "msv_operator_errors_total", kind="conflict") == 2
    assert metric(metrics, "msv_operator_errors_total", kind="transient") == 1
    assert metric(metrics, "msv_operator_errors_total", kind="unexpected") == 1
    assert metric(metrics, "msv_operator_reconciles_total", result="error") == 4
    assert "Retrying ModelService ml/sentiment in 1.0s: the object has been modified" \
        in caplog.text
    assert "Reconcile of ModelService ml/sentiment failed" in caplog.text


def test_the_backoff_stops_growing_at_60_seconds_and_forget_resets_it(
        scripted: ScriptedPass) -> None:
    rt, _, metrics = make()
    know(rt, A)
    scripted.script[A] = [kube.Transient("connection refused", 0)]
    waits: list[float] = []

    async def scenario() -> None:
        assert rt.queue is not None
        for n in range(1, 9):
            rt.enqueue(A)
            await until(lambda n=n: finished(metrics) == n)
            waits.append(rt.queue.due_in(A) or 0.0)
        rt.forget(A)  # the ModelService was deleted (and, say, created again)
        rt.enqueue(A)
        await until(lambda: finished(metrics) == 9)
        waits.append(rt.queue.due_in(A) or 0.0)

    run(rt, scenario)
    assert [round(w) for w in waits] == [1, 2, 4, 8, 16, 32, 60, 60, 1]


def test_resync_requeues_every_known_modelservice(scripted: ScriptedPass) -> None:
    rt, _, metrics = make(resync_seconds=0.1)
    know(rt, A, B)

    async def scenario() -> None:  # no event at all: only the resync loop queues them
        await until(lambda: scripted.count(A) >= 2 and scripted.count(B) >= 2)

    run(rt, scenario)
    assert metric(metrics, "msv_operator_reconciles_total", result="unchanged") >= 4


def test_a_modelservice_gone_from_the_cache_gets_no_pass(scripted: ScriptedPass) -> None:
    rt, _, _ = make()
    know(rt, A)

    async def scenario() -> None:
        assert await rt.run(B) is None
        rt.enqueue(B)
        rt.enqueue(A)
        await until(lambda: scripted.count(A) == 1)
        await asyncio.sleep(0.05)

    run(rt, scenario)
    assert [k for k, _ in scripted.passes] == [A]
    assert B not in rt.locks


def test_forget_drops_what_was_kept_about_a_modelservice() -> None:
    rt, _, _ = make()
    rt.triggers[A] = ("uid", 1)
    rt.retries[A] = 3
    rt.ctx.measured_at[A] = datetime.now(UTC)
    rt.triggers[B] = ("uid", 2)
    rt.forget(A)
    assert A not in rt.triggers and A not in rt.retries and A not in rt.ctx.measured_at
    assert B in rt.triggers
    rt.executor.shutdown()


def test_no_pass_runs_before_the_index_gate_opens(scripted: ScriptedPass) -> None:
    class Gate:
        def __init__(self) -> None:
            self.opened = asyncio.Event()

        async def wait(self) -> None:
            await self.opened.wait()

        async def report(self, logger: Any) -> None:
            await asyncio.Event().wait()

    rt, _, _ = make()
    know(rt, A)

    async def scenario() -> None:
        gate = Gate()
        rt.index_gate = gate  # type: ignore[assignment]
        rt.start()
        try:
            rt.enqueue(A)
            await asyncio.sleep(0.2)
            assert scripted.passes == []
            gate.opened.set()
            await until(lambda: scripted.count(A) == 1)
        finally:
            await stop(rt)

    asyncio.run(scenario())


def test_a_capability_change_requeues_every_known_modelservice(
        scripted: ScriptedPass) -> None:
    rt, client, _ = make(discovery_seconds=0.0)
    know(rt, A, B)

    async def scenario() -> None:
        await until(lambda: len(client.discoveries) >= 2)  # the first answer: nothing to redo
        assert scripted.passes == []
        client.served_apis.add(kube.HTTPROUTE_API)  # Gateway API installed
        await until(lambda: scripted.count(A) == 1 and scripted.count(B) == 1)

    run(rt, scenario)


def test_events_are_posted_in_order_and_a_failed_post_fails_nothing(
        scripted: ScriptedPass, posted: Posted, caplog: pytest.LogCaptureFixture) -> None:
    rt, _, metrics = make()
    know(rt, A)
    ready = conditions.Transition(type="Ready", status="True", reason="AllVariantsReady",
                                  message="every variant is ready", previous_status="False",
                                  previous_reason="RollingOut")
    scripted.script[A] = [reconcile.Result(
        transitions=[ready], repaired=["re-created Service sentiment: it was deleted"],
        events=[("Normal", "RolloutStep", "int8 at 10%"),
                ("Warning", "BrownoutEngaged", "p95 over the objective")])]
    posted.fail = {"Repaired"}

    async def scenario() -> None:
        rt.enqueue(A)
        await until(lambda: len(posted.events) == 3)
        await asyncio.sleep(0.05)

    run(rt, scenario)
    assert [(t, r, m) for t, r, m, _, _ in posted.events] == [
        ("Normal", "Ready", "every variant is ready"),
        ("Normal", "RolloutStep", "int8 at 10%"),
        ("Warning", "BrownoutEngaged", "p95 over the objective")]
    involved = posted.events[0][4]
    assert involved["apiVersion"] == API_VERSION
    assert involved["kind"] == "ModelService"
    assert involved["metadata"]["name"] == "sentiment"
    assert posted.events[0][3].endswith("Z")
    assert "Could not post event Repaired" in caplog.text
    assert scripted.count(A) == 1  # a lost Event is not retried by another pass
    assert metric(metrics, "msv_operator_rollout_events_total", reason="RolloutStep") == 1
    assert metric(metrics, "msv_operator_rollout_events_total", reason="BrownoutEngaged") == 1


def test_a_pass_sees_the_gpu_nodes_of_the_node_index_only_with_gpu_fit() -> None:
    from msv_operator import handlers, pools
    from msv_operator.metrics import OperatorMetrics

    gpu = {"metadata": {"name": "gpu-1", "labels": {pools.PRODUCT_LABEL: "NVIDIA-L4",
                                                     "kubernetes.io/os": "linux"}},
           "status": {"allocatable": {"nvidia.com/gpu": "4", "cpu": "48"}}}
    cpu = {"metadata": {"name": "cpu-1"}, "status": {"allocatable": {"cpu": "16"}}}
    trimmed = [t for t in map(pools.trim_node, (gpu, cpu)) if t is not None]
    assert [t["metadata"] for t in trimmed] == [
        {"name": "gpu-1", "labels": {pools.PRODUCT_LABEL: "NVIDIA-L4"}}]
    rt, _, _ = make()
    assert rt.observed(A).nodes == []  # watched, none listed yet
    rt.bind({"msv_nodes": {cache.GPU_NODES: trimmed}})
    assert rt.observed(A).nodes == trimmed
    rt.ctx.gpu.warned[A] = {("pvc://m", 1)}
    rt.forget(A)
    assert A not in rt.ctx.gpu.warned
    rt.executor.shutdown()
    off, _, _ = make(gpu_fit=False)
    off.bind({"msv_nodes": {cache.GPU_NODES: trimmed}})
    assert off.observed(A).nodes is None
    off.executor.shutdown()
    # the handlers index Nodes only with GPU fit on
    for config, indexed in ((OperatorConfig(), True), (OperatorConfig(gpu_fit=False), False)):
        registry = handlers.register(config, OperatorMetrics())
        ids = {h.id for h in registry._indexing.get_all_handlers()}
        assert ("msv_nodes" in ids) is indexed


def test_the_end_of_an_artifact_read_queues_a_pass_of_each_modelservice_that_waited(
        scripted: ScriptedPass) -> None:
    from msv_operator import artifacts, placement

    rt, _, metrics = make()
    know(rt, A, B)
    reads = rt.ctx.gpu.reads
    reads.grace = 0
    release = threading.Event()
    started: list[str] = []

    def job() -> artifacts.NotChecked:
        started.append("read")
        assert release.wait(10)
        return artifacts.NotChecked("http://store.test/m.safetensors", "answered HTTP 404")

    key = ("http://store.test/m.safetensors", None, None)

    async def scenario() -> None:
        for waiter in (A, B):  # two passes ask while the one read runs on its thread
            answer = reads.ask(key, job, rt.ctx.gpu.cache, waiter)
            assert isinstance(answer, placement.Pending)
        assert reads.in_flight() == [key]
        release.set()
        await until(lambda: finished(metrics) == 2)

    run(rt, scenario)
    assert sorted(k for k, _ in scripted.passes) == [A, B]
    assert started == ["read"]  # one read for both
    assert isinstance(rt.ctx.gpu.cache.get(key), artifacts.NotChecked)
    assert reads.in_flight() == []
