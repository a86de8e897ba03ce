"""Whole reconcile passes with GPU fit on the local cluster's simulated pools (A100 80GB,
L4, an H100 in MIG slices; localcluster.nodes), artifacts shaped like public checkpoints
(tests/safetensors_headers.py) served by a reader double: where each variant goes, what is
refused and why, what stays where it runs, what waits for its artifact's read, and what the
status and Events say; and what a ModelService without GPUs costs."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any

import safetensors_headers as sh
from fakekube import FakeKube
from msv_operator import artifacts, builders, gpufit, placement, pools, prices, reconcile
from msv_operator import kube as kubeapi
from msv_operator.config import OperatorConfig

from localcluster import nodes as local

NOW = "2026-01-01T12:00:00Z"
A100, L4, H100 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"
URI_13B = "http://store.test/llama-13b/model.safetensors"
URI_70B = "http://store.test/llama-70b/model.safetensors"
URI_3B = "http://store.test/open-llama-3b/model.safetensors"
SHAPES = {URI_13B: sh.LLAMA_2_13B, URI_70B: sh.LLAMA_2_70B, URI_3B: sh.OPEN_LLAMA_3B}


class Reader:
    """``artifacts.read`` on the shapes of SHAPES (headers and config.json); any other http
    URI answers 404, pvc:// and file:// are what artifacts.read says. Counts its reads."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, artifacts.S3Access | None]] = []

    def __call__(self, uri: str, *, s3: artifacts.S3Access | None = None
                 ) -> artifacts.Artifact | artifacts.NotChecked:
        self.reads.append((uri, s3))
        if not uri.startswith("http"):
            return artifacts.read(uri)  # pvc://, file://: never read, said so
        shape = SHAPES.get(uri)
        if shape is None:
            return artifacts.NotChecked(uri, f"{uri} answered HTTP 404")
        header = gpufit.parse_header(sh.header(shape.tensors(), "F16"))
        return artifacts.Artifact(uri, (header,), shape.config(), header.nbytes)


class Inline(concurrent.futures.Executor):
    """Runs each background read as it starts: the pass that started it finds it ended."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


class Held(concurrent.futures.Executor):
    """Keeps each background read until the test ends it (``finish``)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...],
                              concurrent.futures.Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.append((fn, args, future))
        return future

    def finish(self) -> None:
        jobs, self.jobs = self.jobs, []
        for fn, args, future in jobs:
            future.set_result(fn(*args))


class FixedCapabilities:
    def get(self) -> kubeapi.CapabilityAnswer:
        return kubeapi.CapabilityAnswer(service_monitor=False, gateway_api=False)


def context(kube: FakeKube, reader: Callable[..., Any],
            reads: placement.HeaderReads | None = None, **config: Any) -> reconcile.Context:
    """A pass's context; its artifact reads end as they start unless ``reads`` says else."""
    return reconcile.Context(config=OperatorConfig(**config), kube=kube,
                             capabilities=FixedCapabilities(),  # type: ignore[arg-type]
                             gpu=placement.GpuFitState(
                                 reader=reader,
                                 reads=reads or placement.HeaderReads(executor=Inline())))


def held_reads(now: list[float] | None = None) -> tuple[placement.HeaderReads, Held,
                                                        list[tuple[str, str]]]:
    """Background reads the test ends (``Held.finish``), on the clock ``now``; the
    ModelServices they wake."""
    held, woken = Held(), []
    clock = (lambda: now[0]) if now is not None else (lambda: 0.0)
    reads = placement.HeaderReads(executor=held, grace=0, clock=clock)
    reads.wake = woken.append
    return reads, held, woken


def gpu_nodes(without: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The local cluster's GPU nodes as the operator's watch cache keeps them."""
    out = [pools.trim_node(n) for n in local.pool_manifest()["items"]]
    return [n for n in out if n is not None
            and n["metadata"]["labels"].get(pools.PRODUCT_LABEL) not in without]


def ms(*variants: dict[str, Any], gpu: dict[str, Any] | None = None, generation: int = 1,
       uri: str = URI_13B, **spec: Any) -> dict[str, Any]:
    """A text-classification ModelService with ``variants`` (the first takes the traffic)."""
    variants = variants or ({"name": "fp16", "optimization": {"quantization": "float16"}},)
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "llm", "namespace": "ml", "uid": "uid-1",
                         "generation": generation},
            "spec": {"model": {"uri": uri, "framework": "transformers",
                               "task": "text-classification"},
                     "gpu": {"count": 1} if gpu is None else gpu,
                     "variants": list(variants),
                     "traffic": [{"variant": variants[0]["name"], "weight": 100}], **spec}}


FP16 = {"name": "fp16", "optimization": {"quantization": "float16"}}
INT8 = {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}
BIG = {"name": "big", "model": {"uri": URI_70B}, "optimization": {"quantization": "float16"}}


def run(ctx: reconcile.Context, body: dict[str, Any], kube: FakeKube,
        live: list[dict[str, Any]] = (), pods: list[dict[str, Any]] = (),  # type: ignore[assignment]
        nodes_: list[dict[str, Any]] | None = None) -> reconcile.Result:
    kube.applied.clear()
    observed = reconcile.Observed(objects=list(live), pods=list(pods),
                                  nodes=gpu_nodes() if nodes_ is None else nodes_)
    return reconcile.reconcile(ctx, {**body, "status": dict(kube.status)}, observed, NOW)


def deployments(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {name: obj for (kind, name), obj in kube.applied.items() if kind == "Deployment"}


def target(dep: Mapping[str, Any]) -> pools.Target | None:
    return builders.gpu_target_of(dep)


def running(dep: Mapping[str, Any], replicas: int = 1) -> dict[str, Any]:
    """The Deployment as the API server returns it once its pods run."""
    return {**dep, "metadata": {**dep["metadata"], "generation": 1},
            "status": {"observedGeneration": 1, "replicas": replicas,
                       "readyReplicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": replicas}}


def live_objects(kube: FakeKube, replicas: int = 1) -> list[dict[str, Any]]:
    """Everything the last pass applied, its Deployments running."""
    return [running(o, replicas) if o["kind"] == "Deployment" else dict(o)
            for o in kube.applied.values()]


def secret_reads(kube: FakeKube) -> list[str]:
    return [name for kind, _, name in kube.gets if kind == "Secret"]


def entry(kube: FakeKube, variant: str) -> dict[str, Any]:
    return next(v for v in kube.status["variants"] if v["name"] == variant)


def ready(kube: FakeKube) -> dict[str, Any]:
    return next(c for c in kube.status["conditions"] if c["type"] == "Ready")


def unscheduled_pod(variant: str) -> dict[str, Any]:
    return {"metadata": {"name": f"llm-{variant}-1", "labels": {
                builders.LABEL_MODELSERVICE: "llm", builders.LABEL_VARIANT: variant}},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/7 nodes are available: 4 Insufficient nvidia.com/gpu."}]}}


# ---- where each variant goes ------------------------------------------------------------------

def test_13b_float16_goes_to_the_a100_pool_and_its_int8_variant_to_the_l4() -> None:
    kube, reader = FakeKube(), Reader()
    result = run(context(kube, reader), ms(FP16, INT8), kube)
    assert result.invalid is None and result.events == []
    deps = deployments(kube)
    fp16, int8 = deps["llm-fp16"], deps["llm-int8"]
    assert target(fp16) == pools.Target("nvidia.com/gpu", 1, (A100,))
    assert target(int8) == pools.Target("nvidia.com/gpu", 1, (L4,))
    pod = fp16["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    # the estimate and the placement in the status, before any pod runs
    fp16_status, int8_status = entry(kube, "fp16"), entry(kube, "int8")
    assert fp16_status["gpuMemory"]["weightBytes"] == 2 * sh.LLAMA_2_13B.parameters
    assert fp16_status["gpuMemory"]["tokens"] == 4096  # the model's context (config.json)
    assert fp16_status["placement"] == {
        "product": A100, "resource": "nvidia.com/gpu", "count": 1,
        "deviceMemoryBytes": 80 * 2**30, "pinned": False, "checked": True,
        "pricePerHour": 5.12}
    assert int8_status["placement"]["product"] == L4
    assert int8_status["gpuMemory"]["totalBytes"] < 23034 * 2**20 < (
        fp16_status["gpuMemory"]["totalBytes"])
    assert (fp16_status["costPerHour"], fp16_status["pareto"]) == (0.0, "unmeasured")
    # each artifact is read once per pass at most, and not again by the next pass
    assert [uri for uri, _ in reader.reads] == [URI_13B]
    run(context(kube, reader), ms(FP16, INT8), kube)
    assert len(reader.reads) == 2  # a new Context: a new cache (as after a restart)


def test_a_running_variant_costs_its_pods_at_its_placements_price() -> None:
    kube, reader = FakeKube(), Reader()
    ctx = context(kube, reader)
    run(ctx, ms(FP16, INT8, replicas=3), kube)
    live = live_objects(kube, 2)
    result = run(ctx, ms(FP16, INT8, replicas=3), kube, live)
    assert result.applied == []  # the same placement: nothing to re-apply
    assert entry(kube, "fp16")["costPerHour"] == 2 * 5.12
    assert entry(kube, "int8")["costPerHour"] == 1.6
    assert len(reader.reads) == 1


def test_a_3b_variant_takes_an_h100_slice_where_it_is_the_cheapest_that_holds_it() -> None:
    kube = FakeKube()
    small = {"name": "small", "optimization": {"quantization": "float16"}}
    table = prices.parse_prices({"mig": {H100: {"1g.10gb": 0.5}}})
    run(context(kube, Reader(), gpu_prices=table), ms(small, uri=URI_3B), kube)
    dep = deployments(kube)["llm-small"]
    assert target(dep) == pools.Target("nvidia.com/mig-1g.10gb", 1, (H100,))
    assert entry(kube, "small")["placement"]["migProfile"] == "1g.10gb"
    # at the list prices the L4 is cheaper
    kube = FakeKube()
    run(context(kube, Reader()), ms(small, uri=URI_3B), kube)
    assert target(deployments(kube)["llm-small"]) == pools.Target("nvidia.com/gpu", 1, (L4,))


# ---- what no pool holds -----------------------------------------------------------------------

def test_a_70b_variant_is_refused_naming_its_need_and_the_largest_offer() -> None:
    kube = FakeKube()
    result = run(context(kube, Reader()), ms(FP16, BIG), kube)
    assert result.invalid is None
    assert sorted(deployments(kube)) == ["llm-fp16"]  # the others are served
    assert ("Service", "llm-big") in kube.applied  # its Service stays for the routes
    c = ready(kube)
    assert (c["status"], c["reason"]) == ("False", "InsufficientGPUMemory")
    assert c["message"] == ("variant big: needs 135.0 GiB of GPU memory, the largest offer is "
                            "80.0 GiB (NVIDIA-A100-SXM4-80GB)")
    stalled = next(x for x in kube.status["conditions"] if x["type"] == "Stalled")
    assert stalled["status"] == "True"
    big = entry(kube, "big")
    assert big["gpuMemory"]["weightBytes"] > 80 * 2**30 and "placement" not in big


def test_a_pinned_product_that_cannot_hold_the_variant_gets_no_deployment() -> None:
    kube = FakeKube()
    run(context(kube, Reader()), ms(FP16, gpu={"count": 1, "products": [L4]}), kube)
    assert deployments(kube) == {}
    c = ready(kube)
    assert c["reason"] == "InsufficientGPUMemory"
    assert c["message"] == ("variant fp16: needs 28.2 GiB of GPU memory, the largest offer "
                            "among nvidia.com/gpu of the pinned products NVIDIA-L4 is 22.5 GiB "
                            "(NVIDIA-L4)")
    # pinned to products that hold it: only those, and not moved to a cheaper one
    kube = FakeKube()
    run(context(kube, Reader()), ms(INT8, gpu={"count": 1, "products": [A100, L4]}), kube)
    assert target(deployments(kube)["llm-int8"]) == pools.Target("nvidia.com/gpu", 1, (A100, L4))
    assert entry(kube, "int8")["placement"]["pinned"] is True


def test_a_refused_variant_keeps_its_running_deployment_untouched() -> None:
    kube, reader = FakeKube(), Reader()
    ctx = context(kube, reader)
    run(ctx, ms(FP16, INT8), kube)
    live = [running(d) for d in deployments(kube).values()]
    # the int8 variant becomes a float16 70B: no pool holds it
    moved = {**BIG, "name": "int8"}
    run(ctx, ms(FP16, moved, generation=2), kube, live)
    assert "llm-int8" not in deployments(kube) and kube.deleted == []
    assert ready(kube)["reason"] == "InsufficientGPUMemory"


# ---- what runs stays ---------------------------------------------------------------------------

def test_changed_prices_move_nothing_that_runs_and_new_pods_follow_them() -> None:
    kube, reader = FakeKube(), Reader()
    run(context(kube, reader), ms(FP16, INT8), kube)
    live = [running(d) for d in deployments(kube).values()]
    # the L4 gets dear: the int8 variant would now go to the A100 pool
    dear = prices.parse_prices({"products": {L4: 9.0}})
    ctx = context(kube, reader, gpu_prices=dear)
    second = {**INT8, "name": "int8-b"}
    result = run(ctx, ms(FP16, INT8, second, generation=2), kube, live)
    deps = deployments(kube)
    assert "llm-int8" not in deps and "llm-fp16" not in deps  # unchanged, not re-applied
    assert target(deps["llm-int8-b"]) == pools.Target("nvidia.com/gpu", 1, (A100,))
    assert entry(kube, "int8")["placement"]["pricePerHour"] == 9.0  # costed at today's price
    assert entry(kube, "int8")["costPerHour"] == 9.0
    assert result.pruned == []
    # once none of its pods can be scheduled, it is placed again from the pools of now
    run(ctx, ms(FP16, INT8, second, generation=2), kube, live,
        pods=[unscheduled_pod("int8")])
    assert target(deployments(kube)["llm-int8"]) == pools.Target("nvidia.com/gpu", 1, (A100,))


def test_a_changed_variant_is_placed_again() -> None:
    kube, reader = FakeKube(), Reader()
    ctx = context(kube, reader)
    run(ctx, ms(INT8), kube)
    live = [running(d) for d in deployments(kube).values()]
    assert target(live[0]) == pools.Target("nvidia.com/gpu", 1, (L4,))
    # int8 -> float16 (28.2 GiB): the inputs changed, the L4 cannot hold it
    as_fp16 = {"name": "int8", "optimization": {"quantization": "float16"}}
    run(ctx, ms(as_fp16, generation=2), kube, live)
    assert target(deployments(kube)["llm-int8"]) == pools.Target("nvidia.com/gpu", 1, (A100,))


def test_a_deployment_made_before_gpu_fit_is_adopted_where_it_runs() -> None:
    kube, reader = FakeKube(), Reader()
    run(context(kube, reader, gpu_fit=False), ms(FP16), kube)
    before = deployments(kube)["llm-fp16"]
    assert target(before) == pools.Target("nvidia.com/gpu", 1)  # spec.gpu as written
    run(context(kube, reader), ms(FP16), kube, [running(before)])
    after = deployments(kube)["llm-fp16"]
    assert after["spec"]["template"] == before["spec"]["template"]  # no pod restarts
    assert after["metadata"]["annotations"][builders.PLACEMENT_ANNOTATION]
    placed = entry(kube, "fp16")["placement"]
    assert (placed["resource"], placed["checked"]) == ("nvidia.com/gpu", False)


# ---- what cannot be checked ----------------------------------------------------------------------

def test_an_unreadable_artifact_is_placed_as_pinned_with_one_warning_per_uri_and_generation(
) -> None:
    kube, reader = FakeKube(), Reader()
    ctx = context(kube, reader)
    uri = "http://store.test/missing/model.safetensors"
    body = ms(FP16, INT8, gpu={"count": 1, "products": [A100]}, uri=uri)
    result = run(ctx, body, kube)
    deps = deployments(kube)
    assert {name: target(d) for name, d in deps.items()} == {
        name: pools.Target("nvidia.com/gpu", 1, (A100,)) for name in ("llm-fp16", "llm-int8")}
    assert result.events == [("Warning", "GPUFitNotChecked", (
        f"variant fp16: the GPU memory fit of {uri} was not checked: {uri} answered HTTP 404; "
        "the pods are placed as spec.gpu says"))]
    assert entry(kube, "fp16")["placement"]["checked"] is False
    assert "gpuMemory" not in entry(kube, "fp16")
    # the next pass of the same generation warns no more; the next generation does again
    assert run(ctx, body, kube).events == []
    again = run(ctx, ms(FP16, INT8, gpu={"count": 1, "products": [A100]}, uri=uri,
                        generation=2), kube)
    assert [e[1] for e in again.events] == ["GPUFitNotChecked"]
    assert [u for u, _ in reader.reads] == [uri]  # a failed read is kept for a while
    # pvc:// is never read: the pods mount it
    kube = FakeKube()
    pvc = run(context(kube, Reader()), ms(FP16, uri="pvc://models/llama"), kube)
    assert target(deployments(kube)["llm-fp16"]) == pools.Target("nvidia.com/gpu", 1)
    assert "pvc:// volume" in pvc.events[0][2]


def test_a_cluster_without_labelled_gpu_nodes_places_as_spec_gpu_says() -> None:
    kube = FakeKube()
    result = run(context(kube, Reader()), ms(FP16), kube, nodes_=[])
    assert target(deployments(kube)["llm-fp16"]) == pools.Target("nvidia.com/gpu", 1)
    (event,) = result.events
    assert event[1] == "GPUFitNotChecked" and "the cluster offers no GPU" in event[2]
    assert ready(kube)["reason"] != "InsufficientGPUMemory"


def test_gpu_fit_off_or_nodes_not_watched_is_todays_placement() -> None:
    for ctx_config, nodes_ in (({"gpu_fit": False}, gpu_nodes()), ({}, None)):
        kube, reader = FakeKube(), Reader()
        ctx = context(kube, reader, **ctx_config)
        observed = reconcile.Observed(nodes=nodes_)
        reconcile.reconcile(ctx, ms(FP16, BIG), observed, NOW)
        deps = deployments(kube)
        assert sorted(deps) == ["llm-big", "llm-fp16"]
        assert all(target(d) == pools.Target("nvidia.com/gpu", 1) for d in deps.values())
        assert reader.reads == []
        assert all("placement" not in v and "pareto" not in v for v in kube.status["variants"])


def test_s3_reads_are_signed_with_the_credentials_secret_only_when_allowed() -> None:
    uri = "s3://models/llama-13b/"
    data = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_ENDPOINT_URL": "http://s3.store.test"}
    secret = {"kind": "Secret", "metadata": {"name": "store", "namespace": "ml"},
              "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    model = {"uri": uri, "framework": "transformers", "task": "text-classification",
             "credentialsSecret": "store"}
    kube, reader = FakeKube(secret), Reader()
    ctx = context(kube, reader, gpu_fit_read_credentials=True)
    run(ctx, ms(FP16, INT8, model=model), kube)
    ((read_uri, access),) = reader.reads
    assert read_uri == uri and access is not None
    assert (access.access_key_id, access.endpoint_url, access.signs) == (
        "key", "http://s3.store.test", True)
    assert secret_reads(kube) == ["store"]  # read once, for the artifact both variants share
    run(ctx, ms(FP16, INT8, model=model), kube)
    assert secret_reads(kube) == ["store"]  # the read is cached, so is the Secret
    # without the setting: never read, the S3 request goes unsigned
    kube, reader = FakeKube(secret), Reader()
    result = run(context(kube, reader), ms(FP16, model=model), kube)
    assert secret_reads(kube) == [] and reader.reads == [(uri, None)]
    assert result.events[0][1] == "GPUFitNotChecked"
    # allowed but missing: said in the warning
    kube, reader = FakeKube(), Reader()
    result = run(context(kube, reader, gpu_fit_read_credentials=True), ms(FP16, model=model),
                 kube)
    assert "(the credentials Secret store does not exist)" in result.events[0][2]


# ---- the artifact cache ------------------------------------------------------------------------

def test_the_cache_keeps_pinned_reads_retries_failures_and_drops_the_oldest() -> None:
    now = [0.0]
    cache = placement.ArtifactCache(clock=lambda: now[0], limit=2)
    ok = artifacts.Artifact("u", (), None, 1)
    failed = artifacts.NotChecked("u", "timeout")
    cache.put(("pinned", "ab" * 32, None), ok)
    cache.put(("unpinned", None, None), ok)
    cache.put(("failed", None, None), failed)  # over the limit: the oldest goes
    assert cache.get(("pinned", "ab" * 32, None)) is None
    assert cache.get(("failed", None, None)) == failed
    now[0] = placement.NOT_CHECKED_TTL
    assert cache.get(("failed", None, None)) is None  # tried again
    assert cache.get(("unpinned", None, None)) == ok
    now[0] = placement.UNPINNED_TTL
    assert cache.get(("unpinned", None, None)) is None
    cache.put(("pinned", "ab" * 32, None), ok)
    now[0] = 10 * placement.UNPINNED_TTL
    assert cache.get(("pinned", "ab" * 32, None)) == ok


# ---- cost and the frontier in the status -----------------------------------------------------

def test_the_status_marks_the_frontier_of_three_measured_variants() -> None:
    from msv_operator import status

    body = ms(FP16, INT8, {"name": "pruned", "optimization": {
        "quantization": "dynamic-int8", "pruning": {"method": "structured", "amount": 0.3}}},
        {"name": "idle"})
    deps = {v: running({"metadata": {}, "spec": {"replicas": 1}})
            for v in ("fp16", "int8", "pruned", "idle")}
    measured = {  # fp16 is the stable variant: the reference, its agreement is 1
        "fp16": {"p95Ms": 30.0, "rps": 10.0},
        "int8": {"p95Ms": 25.0, "rps": 10.0, "agreement": 0.99,
                 "gpuMemory": {"measuredBytes": 15 * 2**30}},
        "pruned": {"p95Ms": 40.0, "rps": 10.0, "agreement": 0.98},
        "idle": {"p95Ms": 20.0}}
    a100 = status.GpuVariant({"totalBytes": 30 * 2**30}, {"product": A100}, 5.12)
    l4 = status.GpuVariant({"totalBytes": 20 * 2**30}, {"product": L4}, 0.8)
    st = status.compute_status(body, deployments=deps, pods=[], now=NOW, observed_generation=1,
                               measured=measured,
                               gpu={"fp16": a100, "int8": l4, "pruned": l4, "idle": l4})
    by = {v["name"]: v for v in st["variants"]}
    # one pod for an hour at 10 requests/s: 36,000 requests
    assert (by["fp16"]["costPerHour"], by["fp16"]["costPer1kRequests"]) == (
        5.12, round(5.12 / 36, 6))
    assert (by["int8"]["costPerHour"], by["int8"]["costPer1kRequests"]) == (
        0.8, round(0.8 / 36, 6))
    marks = {name: (v["pareto"], v.get("dominatedBy")) for name, v in by.items()}
    assert marks == {"fp16": ("frontier", None),  # the best agreement
                     "int8": ("frontier", None),  # the fastest and cheapest measured
                     "pruned": ("dominated", ["int8"]),
                     "idle": ("unmeasured", None)}  # serves nothing: no cost per request
    # the measured peak sits beside the estimate
    assert by["int8"]["gpuMemory"] == {"totalBytes": 20 * 2**30, "measuredBytes": 15 * 2**30}
    # and is carried to the next pass, the estimate is not
    assert status.prior_measured(st)["int8"]["gpuMemory"] == {"measuredBytes": 15 * 2**30}


# ---- the artifact read in the background -------------------------------------------------------

def condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    return next(c for c in kube.status["conditions"] if c["type"] == type_)


def renamed(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {**body, "metadata": {**body["metadata"], "name": name, "uid": f"uid-{name}"}}


def test_an_unpinned_variant_waits_for_its_artifacts_read_with_no_deployment() -> None:
    kube, reader = FakeKube(), Reader()
    reads, held, woken = held_reads()
    ctx = context(kube, reader, reads)
    result = run(ctx, ms(FP16, INT8), kube)
    assert deployments(kube) == {} and reader.reads == []  # started, not ended
    assert len(held.jobs) == 1  # one read for the artifact both variants share
    assert ("Service", "llm-fp16") in kube.applied  # the rest is made
    fp16 = entry(kube, "fp16")
    assert fp16["placement"] == {"pending": True, "count": 1, "pinned": False}
    assert "gpuMemory" not in fp16 and "costPerHour" not in fp16
    for type_, state in (("Ready", "False"), ("Progressing", "True"), ("Reconciling", "True")):
        c = condition(kube, type_)
        assert (c["status"], c["reason"]) == (state, "EstimatingGPUMemory"), type_
    assert condition(kube, "Progressing")["message"].startswith(
        f"variant fp16: waiting for its GPU memory estimate: the operator is reading the "
        f"headers of {URI_13B} to choose a GPU pool, and creates its Deployment then; "
        "variant int8: waiting for its GPU memory estimate")
    assert condition(kube, "Stalled")["status"] == "False"  # not a failure
    assert result.events == []
    # the pass comes back by the time the read counts as failed, should nothing wake it
    assert result.requeue_after == placement.READ_TIMEOUT + 1.0
    # another pass, and another ModelService of the same artifact: no second read
    run(ctx, ms(FP16, INT8), kube)
    run(ctx, renamed(ms(FP16), "other"), FakeKube())
    assert len(held.jobs) == 1 and reads.in_flight() == [(URI_13B, None, None)]
    # its end wakes both, and the next pass places the variants
    held.finish()
    assert sorted(woken) == [("ml", "llm"), ("ml", "other")]
    assert reads.in_flight() == [] and [uri for uri, _ in reader.reads] == [URI_13B]
    result = run(ctx, ms(FP16, INT8), kube)
    deps = deployments(kube)
    assert target(deps["llm-fp16"]) == pools.Target("nvidia.com/gpu", 1, (A100,))
    assert target(deps["llm-int8"]) == pools.Target("nvidia.com/gpu", 1, (L4,))
    assert "pending" not in entry(kube, "fp16")["placement"]
    assert condition(kube, "Progressing")["reason"] == "RollingOut"
    assert result.requeue_after != placement.READ_TIMEOUT + 1.0
    assert len(reader.reads) == 1 and held.jobs == []


def test_a_pinned_variant_is_made_at_once_and_placed_again_once_read() -> None:
    kube, reader = FakeKube(), Reader()
    reads, held, woken = held_reads()
    ctx = context(kube, reader, reads)
    body = ms(FP16, gpu={"count": 1, "products": [A100]})
    result = run(ctx, body, kube)
    dep = deployments(kube)["llm-fp16"]
    assert target(dep) == pools.Target("nvidia.com/gpu", 1, (A100,))
    inputs = dep["metadata"]["annotations"][builders.PLACEMENT_ANNOTATION]
    assert inputs.endswith(placement.UNESTIMATED)
    placed = entry(kube, "fp16")["placement"]
    assert (placed["product"], placed["pinned"], placed["checked"], placed["pending"]) == (
        A100, True, False, True)
    assert placed["pricePerHour"] == 5.12
    assert result.events == [] and ready(kube)["reason"] == "RollingOut"
    # a pass before the read ends changes nothing
    run(ctx, body, kube, [running(dep)])
    assert "llm-fp16" not in deployments(kube)
    held.finish()
    assert woken == [("ml", "llm")]
    run(ctx, body, kube, [running(dep)])
    again = deployments(kube)["llm-fp16"]  # placed with its estimate: only the hash changes
    assert again["spec"]["template"] == dep["spec"]["template"]
    assert again["metadata"]["annotations"][builders.PLACEMENT_ANNOTATION] == inputs.removesuffix(
        placement.UNESTIMATED)
    placed = entry(kube, "fp16")["placement"]
    assert placed["checked"] is True and "pending" not in placed
    assert entry(kube, "fp16")["gpuMemory"]["weightBytes"] == 2 * sh.LLAMA_2_13B.parameters


def test_a_pinned_variant_made_before_its_estimate_is_refused_once_read_and_left_running(
) -> None:
    kube, reader = FakeKube(), Reader()
    reads, held, _ = held_reads()
    ctx = context(kube, reader, reads)
    body = ms(FP16, gpu={"count": 1, "products": [L4]})  # 28.2 GiB on a 22.5 GiB L4
    run(ctx, body, kube)
    dep = deployments(kube)["llm-fp16"]
    held.finish()
    run(ctx, body, kube, [running(dep)])
    assert "llm-fp16" not in deployments(kube) and kube.deleted == []
    assert ready(kube)["reason"] == "InsufficientGPUMemory"


def test_a_read_that_raises_is_placed_as_spec_gpu_says_with_the_warning() -> None:
    def broken(uri: str, *, s3: artifacts.S3Access | None = None) -> artifacts.Artifact:
        raise RuntimeError("a bug in the reader")

    kube = FakeKube()
    reads, held, woken = held_reads()
    ctx = context(kube, broken, reads)
    run(ctx, ms(FP16), kube)
    assert deployments(kube) == {}
    held.finish()
    assert woken == [("ml", "llm")] and reads.in_flight() == []
    result = run(ctx, ms(FP16), kube)
    assert target(deployments(kube)["llm-fp16"]) == pools.Target("nvidia.com/gpu", 1)
    (event,) = result.events
    assert event[:2] == ("Warning", "GPUFitNotChecked")
    assert f"the GPU memory fit of {URI_13B} was not checked: reading it failed: RuntimeError" in (
        event[2])
    assert entry(kube, "fp16")["placement"]["checked"] is False


def test_a_read_not_ended_in_time_counts_as_failed_and_its_late_answer_still_counts() -> None:
    now = [0.0]
    kube, reader = FakeKube(), Reader()
    reads, held, _ = held_reads(now)
    ctx = context(kube, reader, reads)
    assert run(ctx, ms(INT8), kube).requeue_after == placement.READ_TIMEOUT + 1.0
    now[0] = placement.READ_TIMEOUT / 2
    assert run(ctx, ms(INT8), kube).requeue_after == placement.READ_TIMEOUT / 2 + 1.0
    assert deployments(kube) == {}
    now[0] = placement.READ_TIMEOUT
    result = run(ctx, ms(INT8), kube)
    dep = deployments(kube)["llm-int8"]
    assert target(dep) == pools.Target("nvidia.com/gpu", 1)  # as spec.gpu says
    (event,) = result.events
    assert f"reading it took longer than {placement.READ_TIMEOUT:.0f} s" in event[2]
    # still in flight once that failure is forgotten: no second read of the artifact
    now[0] += placement.NOT_CHECKED_TTL
    run(ctx, ms(INT8), kube, [running(dep)])
    assert len(held.jobs) == 1
    # its late answer is kept: the placement that runs is checked against it
    held.finish()
    run(ctx, ms(INT8), kube, [running(dep)])
    assert "llm-int8" not in deployments(kube)
    assert entry(kube, "int8")["placement"]["checked"] is True  # both GPUs hold 19.5 GiB
    assert len(reader.reads) == 1


# ---- a ModelService without GPUs ---------------------------------------------------------------

def cpu_only(**spec: Any) -> dict[str, Any]:
    body = ms(FP16, INT8, **spec)
    del body["spec"]["gpu"]
    return body


def test_a_modelservice_without_gpus_costs_its_cpu_request_at_the_vcpu_price() -> None:
    kube, reader = FakeKube(), Reader()
    ctx = context(kube, reader)
    run(ctx, cpu_only(replicas=2), kube)
    # builders.DEFAULT_REQUESTS' 500m at the list price, $0.0446 per vCPU-hour
    assert entry(kube, "fp16")["placement"] == {"cpu": "500m", "pricePerHour": 0.0223}
    assert reader.reads == [] and "gpuMemory" not in entry(kube, "fp16")
    run(ctx, cpu_only(replicas=2), kube, live_objects(kube, 2))
    assert entry(kube, "fp16")["costPerHour"] == 0.0446  # two pods
    assert entry(kube, "fp16")["pareto"] == "unmeasured"  # no requests measured yet
    # its own request at a price of its own, measured traffic: a cost per 1,000 requests and
    # a place on the frontier
    body = cpu_only(server={"resources": {"requests": {"cpu": "2", "memory": "4Gi"}}})
    kube = FakeKube()
    ctx = context(kube, reader, gpu_prices=prices.parse_prices({"cpu": 0.05}))
    run(ctx, body, kube)
    kube.status["variants"] = [{"name": "fp16", "p95Ms": 20.0, "rps": 10.0},
                               {"name": "int8", "p95Ms": 15.0, "rps": 10.0}]
    run(ctx, body, kube, live_objects(kube, 1))
    fp16, int8 = entry(kube, "fp16"), entry(kube, "int8")
    assert fp16["placement"] == {"cpu": "2", "pricePerHour": 0.1}
    # one pod for an hour at 10 requests/s: 36,000 requests
    assert (fp16["costPerHour"], fp16["costPer1kRequests"]) == (0.1, round(0.1 / 36, 6))
    assert (fp16["pareto"], int8["pareto"]) == ("frontier", "unmeasured")  # int8: no agreement


def test_a_free_cpu_costs_nothing_and_a_pod_without_a_cpu_request_has_no_price() -> None:
    kube, reader = FakeKube(), Reader()
    run(context(kube, reader, gpu_prices=prices.parse_prices({"cpu": 0})), cpu_only(), kube)
    assert entry(kube, "fp16")["placement"] == {"cpu": "500m", "pricePerHour": 0.0}
    # a CPU limit alone is the request (as Kubernetes sets it)
    kube = FakeKube()
    limited = {"requests": {"memory": "1Gi"}, "limits": {"cpu": "1500m"}}
    run(context(kube, reader), cpu_only(server={"resources": limited}), kube)
    assert entry(kube, "fp16")["placement"] == {"cpu": "1500m", "pricePerHour": 0.0669}
    # neither: no price, no cost, unmeasured
    kube = FakeKube()
    run(context(kube, reader), cpu_only(server={"resources": {"requests": {"memory": "1Gi"}}}),
        kube)
    fp16 = entry(kube, "fp16")
    assert "placement" not in fp16 and "costPerHour" not in fp16
    assert fp16["pareto"] == "unmeasured"
    # GPU fit off: no price either
    kube = FakeKube()
    run(context(kube, reader, gpu_fit=False), cpu_only(), kube)
    assert all("placement" not in v and "pareto" not in v for v in kube.status["variants"])
