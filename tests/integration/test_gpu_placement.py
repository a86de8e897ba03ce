"""GPU fit on the real scheduler: the local cluster's simulated GPU pools (kwok nodes labelled
as GPU feature discovery labels them: A100 80GB, L4, an H100 in MIG slices; localcluster.nodes)
and artifacts shaped like public checkpoints whose safetensors header is all there is of them
(tests/safetensors_headers.py, served over HTTP from this process: the operator runs here and
reads the headers; the pods land on kwok's nodes, which never pull anything).

Each variant goes to the cheapest pool that holds it, a variant no pool holds reports
InsufficientGPUMemory and gets no pod, a pinned product is only checked, an artifact that
cannot be read is placed as pinned with a Warning Event, and prices that change move nothing
that runs while new pods follow them (docs/modelservice-api.md, "GPU fit, placement and cost").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import safetensors_headers as sh
from manifests import MS_API, modelservice
from msv_operator import kube, prices
from operator_harness import LABEL_MODELSERVICE, LABEL_VARIANT, RunningOperator, condition
from waiting import wait_for

pytestmark = pytest.mark.slow

A100, L4, H100 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"
PRODUCT_LABEL = "nvidia.com/gpu.product"
SHAPES = {"llama-13b": sh.LLAMA_2_13B, "llama-70b": sh.LLAMA_2_70B,
          "open-llama-3b": sh.OPEN_LLAMA_3B}
FP16 = {"name": "fp16", "optimization": {"quantization": "float16"}}
INT8 = {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTP store of header-only checkpoints: ``<url>/<name>/model.safetensors`` (the
    8-byte length, the header and a few bytes of data: 26 GB of weights in kilobytes) and
    its ``config.json``."""
    root = tmp_path_factory.mktemp("gpu-store")
    for name, shape in SHAPES.items():
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(sh.truncated_file(shape.tensors()))
        (root / name / "config.json").write_text(json.dumps(shape.config()))

    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(root), **kwargs)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def checkpoint(store: str, name: str) -> str:
    return f"{store}/{name}/model.safetensors"


def llm(namespace: str, store: str, *variants: dict[str, Any], name: str = "llm",
        gpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """A text-classification ModelService on the 13B checkpoint; the first variant serves."""
    return modelservice(
        name, namespace,
        model={"uri": checkpoint(store, "llama-13b"), "framework": "transformers",
               "task": "text-classification"},
        gpu=gpu or {"count": 1}, variants=list(variants),
        traffic={variants[0]["name"]: 100, **{v["name"]: 0 for v in variants[1:]}})


def get_ms(k: kube.Kube, ns: str, name: str) -> dict[str, Any] | None:
    return k.get(MS_API, "ModelService", ns, name)


def pods_of(k: kube.Kube, ns: str, name: str, variant: str) -> list[dict[str, Any]]:
    return [p for p in k.list("v1", "Pod", ns, f"{LABEL_MODELSERVICE}={name}")
            if p["metadata"]["labels"].get(LABEL_VARIANT) == variant
            and not p["metadata"].get("deletionTimestamp")]


def scheduled(k: kube.Kube, ns: str, name: str, variant: str) -> list[dict[str, Any]] | None:
    """The variant's pods once every one is bound to a node."""
    pods = pods_of(k, ns, name, variant)
    return pods if pods and all(p["spec"].get("nodeName") for p in pods) else None


def product_of(k: kube.Kube, pod: dict[str, Any]) -> str:
    node = k.get("v1", "Node", None, pod["spec"]["nodeName"]) or {}
    return str(node["metadata"]["labels"].get(PRODUCT_LABEL))


def requests_of(pod: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in pod["spec"]["containers"][0]["resources"]["requests"].items()
            if k.startswith("nvidia.com/")}


def placed_on(k: kube.Kube, ns: str, name: str, variant: str) -> tuple[str, dict[str, str]]:
    """(product, GPU requests) of the variant's pods, once scheduled (all on one product)."""
    pods = wait_for(f"{name}-{variant} scheduled",
                    lambda: scheduled(k, ns, name, variant), timeout=90)
    found = {(product_of(k, p), json.dumps(requests_of(p), sort_keys=True)) for p in pods}
    assert len(found) == 1, found
    product, requests = found.pop()
    return product, json.loads(requests)


def ready_reason(k: kube.Kube, ns: str, name: str, reason: str) -> dict[str, Any]:
    def reported() -> dict[str, Any] | None:
        c = condition(get_ms(k, ns, name), "Ready")
        return c if c.get("reason") == reason else None
    return wait_for(f"{name}: Ready/{reason}", reported, timeout=90)


def variant_status(k: kube.Kube, ns: str, name: str, variant: str) -> dict[str, Any]:
    """The variant's entry in status.variants; {} until a pass has written it (the pods may
    be scheduled before the status write of the pass that created them lands)."""
    ms = get_ms(k, ns, name) or {}
    return next((v for v in (ms.get("status") or {}).get("variants") or ()
                 if v.get("name") == variant), {})


def placement_of(k: kube.Kube, ns: str, name: str, variant: str) -> dict[str, Any]:
    """The variant's status.variants[].placement, once written."""
    return wait_for(f"{variant}'s placement in the status",
                    lambda: variant_status(k, ns, name, variant).get("placement"), timeout=60)


def test_each_variant_goes_to_the_cheapest_pool_that_holds_it(
        operator: RunningOperator, k: kube.Kube, namespace: str, store: str) -> None:
    small = {"name": "small", "model": {"uri": checkpoint(store, "open-llama-3b")},
             "optimization": {"quantization": "float16"}}
    k.apply(llm(namespace, store, FP16, INT8, small))
    # 13B fp16 (28.2 GiB at its 4,096-token context) -> A100; its int8 variant (19.5 GiB) ->
    # the L4's 22.5 GiB; a 3B fp16 (8.3 GiB) -> the L4 too, cheaper than an H100 slice
    assert placed_on(k, namespace, "llm", "fp16") == (A100, {"nvidia.com/gpu": "1"})
    assert placed_on(k, namespace, "llm", "int8") == (L4, {"nvidia.com/gpu": "1"})
    assert placed_on(k, namespace, "llm", "small") == (L4, {"nvidia.com/gpu": "1"})
    fp16 = placement_of(k, namespace, "llm", "fp16")
    assert (fp16["product"], fp16["pricePerHour"], fp16["checked"]) == (A100, 5.12, True)
    memory = variant_status(k, namespace, "llm", "fp16")["gpuMemory"]
    assert memory["weightBytes"] == 2 * sh.LLAMA_2_13B.parameters
    wait_for("Ready=True", lambda: condition(get_ms(k, namespace, "llm"), "Ready").get(
        "status") == "True", timeout=90)


def test_a_3b_variant_takes_an_h100_slice_where_its_price_is_the_lowest(
        crd: None, k: kube.Kube, namespace: str, store: str) -> None:
    table = prices.parse_prices({"mig": {H100: {"1g.10gb": 0.5}}})
    op = RunningOperator([namespace], gpu_prices=table).start()
    try:
        small = {"name": "small", "model": {"uri": checkpoint(store, "open-llama-3b")},
                 "optimization": {"quantization": "float16"}}
        k.apply(llm(namespace, store, small))
        assert placed_on(k, namespace, "llm", "small") == (
            H100, {"nvidia.com/mig-1g.10gb": "1"})
        placement = placement_of(k, namespace, "llm", "small")
        assert (placement["migProfile"], placement["pricePerHour"]) == ("1g.10gb", 0.5)
        assert op.alive
    finally:
        op.stop()


def test_a_70b_variant_reports_insufficient_gpu_memory_and_gets_no_pod(
        operator: RunningOperator, k: kube.Kube, namespace: str, store: str) -> None:
    big = {"name": "big", "model": {"uri": checkpoint(store, "llama-70b")},
           "optimization": {"quantization": "float16"}}
    k.apply(llm(namespace, store, FP16, big))
    c = ready_reason(k, namespace, "llm", "InsufficientGPUMemory")
    assert c["status"] == "False"
    assert c["message"] == ("variant big: needs 135.0 GiB of GPU memory, the largest offer is "
                            "80.0 GiB (NVIDIA-A100-SXM4-80GB)")
    assert placed_on(k, namespace, "llm", "fp16")[0] == A100  # the other variant is served
    deployments = {d["metadata"]["name"] for d in k.list(
        "apps/v1", "Deployment", namespace, f"{LABEL_MODELSERVICE}=llm")}
    assert deployments == {"llm-fp16"}
    assert pods_of(k, namespace, "llm", "big") == []
    events = [e for e in k.list("v1", "Event", namespace)
              if e["involvedObject"].get("kind") == "ModelService"
              and e["reason"] == "InsufficientGPUMemory"]
    assert events and events[0]["type"] == "Warning"


def test_a_pinned_product_that_cannot_hold_the_variant_gets_no_pod(
        operator: RunningOperator, k: kube.Kube, namespace: str, store: str) -> None:
    k.apply(llm(namespace, store, FP16, gpu={"count": 1, "products": [L4]}))
    c = ready_reason(k, namespace, "llm", "InsufficientGPUMemory")
    assert c["message"] == ("variant fp16: needs 28.2 GiB of GPU memory, the largest offer "
                            "among nvidia.com/gpu of the pinned products NVIDIA-L4 is 22.5 GiB "
                            "(NVIDIA-L4)")
    assert k.list("apps/v1", "Deployment", namespace, f"{LABEL_MODELSERVICE}=llm") == []
    assert pods_of(k, namespace, "llm", "fp16") == []


def test_an_unreadable_artifact_is_placed_as_pinned_with_a_warning(
        operator: RunningOperator, k: kube.Kube, namespace: str, store: str) -> None:
    body = llm(namespace, store, INT8, gpu={"count": 1, "products": [A100]})
    body["spec"]["model"]["uri"] = f"{store}/missing/model.safetensors"
    k.apply(body)
    assert placed_on(k, namespace, "llm", "int8") == (A100, {"nvidia.com/gpu": "1"})

    def warned() -> list[dict[str, Any]]:
        return [e for e in k.list("v1", "Event", namespace)
                if e["involvedObject"].get("kind") == "ModelService"
                and e["reason"] == "GPUFitNotChecked"]

    (event,) = wait_for("a GPUFitNotChecked Event", warned, timeout=60)
    assert event["type"] == "Warning"
    assert "answered HTTP 404" in event["message"] and "placed as spec.gpu says" in (
        event["message"])
    assert placement_of(k, namespace, "llm", "int8")["checked"] is False


def test_changed_prices_move_no_running_pod_and_new_pods_follow_them(
        crd: None, k: kube.Kube, namespace: str, store: str) -> None:
    first = RunningOperator([namespace]).start()
    try:
        k.apply(llm(namespace, store, FP16, INT8))
        assert placed_on(k, namespace, "llm", "int8")[0] == L4
        before = {p["metadata"]["uid"]: p["spec"]["nodeName"]
                  for p in pods_of(k, namespace, "llm", "int8")}
    finally:
        first.stop()
    # the chart's prices change (the operator restarts with them): an L4 now costs more than
    # an A100, so a new int8 variant goes to the A100 pool; the running one stays
    dear = prices.parse_prices({"products": {L4: 9.0}})
    second = RunningOperator([namespace], gpu_prices=dear).start()
    try:
        k.apply(llm(namespace, store, FP16, INT8, {**INT8, "name": "int8-b"}))
        assert placed_on(k, namespace, "llm", "int8-b")[0] == A100
        wait_for("int8 costed at the new price", lambda: variant_status(
            k, namespace, "llm", "int8").get("placement", {}).get("pricePerHour") == 9.0,
            timeout=60)
        after = {p["metadata"]["uid"]: p["spec"]["nodeName"]
                 for p in pods_of(k, namespace, "llm", "int8")}
        assert after == before  # the same pods, on the same node
        assert second.alive
    finally:
        second.stop()
