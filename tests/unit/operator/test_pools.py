"""msv_operator.pools: GPU pools from Node objects, prices, and the cheapest pool that fits,
on the local cluster's simulated pools (A100 80GB x 16, L4 x 4, an H100 node in MIG slices)."""

from __future__ import annotations

from typing import Any

import pytest
import safetensors_headers as sh
from msv_operator import gpufit, pools, prices
from msv_operator.pools import DoesNotFit, Placement
from msv_operator.prices import PriceError

from localcluster import nodes

GIB = 2**30
A100, L4, H100 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"


def local_nodes() -> list[dict[str, Any]]:
    return nodes.pool_manifest()["items"]


def local_pools(without: tuple[str, ...] = ()) -> pools.Pools:
    return pools.pools_from_nodes(n for n in local_nodes()
                                  if n["metadata"]["labels"].get(pools.PRODUCT_LABEL)
                                  not in without)


def need(shape: sh.LlamaShape, quantization: str, task: str = "text-generation",
         tokens: int | None = 2048) -> gpufit.MemoryEstimate:
    header = gpufit.parse_header(sh.header(shape.tensors(), "F16"))
    workload = gpufit.Workload("transformers", task, quantization, sequence_length=tokens)
    return gpufit.estimate_from_headers([header], workload, shape.config())


def placed(result: Placement | DoesNotFit) -> Placement:
    assert isinstance(result, Placement), result.message
    return result


# ---- pools ----------------------------------------------------------------------------------

def test_the_local_cluster_offers_whole_gpus_and_mig_slices_from_its_labels() -> None:
    found = local_pools()
    assert found.ignored == ()
    by = {(o.product, o.resource): o for o in found.offers}
    assert set(by) == {(A100, "nvidia.com/gpu"), (L4, "nvidia.com/gpu"),
                       (H100, "nvidia.com/mig-1g.10gb"), (H100, "nvidia.com/mig-2g.20gb"),
                       (H100, "nvidia.com/mig-3g.40gb")}
    a100 = by[A100, "nvidia.com/gpu"]
    assert (a100.memory_bytes, a100.devices, a100.max_per_node) == (80 * GIB, 16, 8)
    assert a100.nodes == ("gpu-a100-1", "gpu-a100-2") and a100.profile is None
    assert by[L4, "nvidia.com/gpu"].memory_bytes == 23034 * 2**20
    slice_ = by[H100, "nvidia.com/mig-3g.40gb"]
    assert (slice_.profile, slice_.devices, slice_.memory_bytes) == ("3g.40gb", 4, 38146 * 2**20)
    assert slice_.gpu_memory_bytes == 81559 * 2**20
    assert slice_.label == f"{H100} MIG 3g.40gb"


def _node(name: str, labels: dict[str, str], allocatable: dict[str, str],
          unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"allocatable": allocatable}}


def test_cordoned_nodes_offer_nothing_and_unlabelled_gpus_are_reported() -> None:
    found = pools.pools_from_nodes([
        _node("cordoned", {pools.PRODUCT_LABEL: L4, pools.MEMORY_LABEL: "23034"},
              {"nvidia.com/gpu": "4"}, unschedulable=True),
        _node("no-memory", {pools.PRODUCT_LABEL: L4}, {"nvidia.com/gpu": "4"}),
        _node("no-product", {}, {"nvidia.com/gpu": "1"}),
        _node("empty", {pools.PRODUCT_LABEL: L4, pools.MEMORY_LABEL: "23034"},
              {"nvidia.com/gpu": "0"}),
    ])
    assert found.offers == ()
    assert found.ignored == (
        "node no-memory: nvidia.com/gpu of NVIDIA-L4 without its memory "
        "(label nvidia.com/gpu.memory)",
        "node no-product: nvidia.com/gpu without label nvidia.com/gpu.product")


def test_mig_memory_comes_from_the_name_without_its_label_and_single_strategy_is_understood(
) -> None:
    found = pools.pools_from_nodes([
        _node("mixed", {pools.PRODUCT_LABEL: A100, pools.MEMORY_LABEL: "81920"},
              {"nvidia.com/mig-1g.10gb": "7"}),
        _node("single", {pools.PRODUCT_LABEL: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
                         pools.MEMORY_LABEL: "4864", pools.MIG_STRATEGY_LABEL: "single"},
              {"nvidia.com/gpu": "56"}),
    ])
    single, mixed = sorted(found.offers, key=lambda o: o.product)
    assert (mixed.memory_bytes, mixed.profile) == (10 * 10**9, "1g.10gb")
    assert (single.resource, single.profile, single.memory_bytes) == (
        "nvidia.com/gpu", "1g.5gb", 4864 * 2**20)
    assert single.parent_product == "NVIDIA-A100-SXM4-40GB"
    # priced as a share of its GPU: 1 of 7 compute slices
    assert prices.DEFAULT_PRICES.of(single) == round(4.10 / 7, 4)


# ---- prices ---------------------------------------------------------------------------------

def test_default_prices_name_their_source_and_mig_slices_take_their_share_of_the_gpu() -> None:
    assert all(p.source.startswith("Amazon EC2") for p in prices.LIST_PRICES)
    assert set(prices.DEFAULT_PRICES.products) <= set(prices.KNOWN_PRODUCTS)
    by = {(o.product, o.profile): o for o in local_pools().offers}
    table = prices.DEFAULT_PRICES
    assert table.of(by[A100, None]) == 5.12 and table.of(by[L4, None]) == 0.80
    # 1g.10gb: 1 of 7 compute slices (more than its memory share, 9536 of 81559 MiB)
    assert table.of(by[H100, "1g.10gb"]) == round(12.29 / 7, 4)
    # 3g.40gb: its memory share (38146 of 81559 MiB) is more than 3 of 7 compute slices
    assert table.of(by[H100, "3g.40gb"]) == round(12.29 * 38146 / 81559, 4)


def test_a_price_table_overrides_the_defaults_and_refuses_what_it_cannot_use() -> None:
    table = prices.parse_prices({"products": {L4: 0.7}, "mig": {H100: {"1g.10gb": 1.0}}})
    by = {(o.product, o.profile): o for o in local_pools().offers}
    assert table.of(by[L4, None]) == 0.7 and table.of(by[A100, None]) == 5.12
    assert table.of(by[H100, "1g.10gb"]) == 1.0
    assert prices.parse_prices(None) is prices.DEFAULT_PRICES
    with pytest.raises(PriceError, match=r"gpuPrices.products.NVIDIA A100: 'NVIDIA A100' is not "
                                         "a known GPU product"):
        prices.parse_prices({"products": {"NVIDIA A100": 4.0}})
    with pytest.raises(PriceError, match=r"gpuPrices.products.NVIDIA-L4: -1 is not a price"):
        prices.parse_prices({"products": {L4: -1}})
    with pytest.raises(PriceError, match=r"gpuPrices.products.NVIDIA-L4: True is not a price"):
        prices.parse_prices({"products": {L4: True}})
    with pytest.raises(PriceError, match=r"gpuPrices.mig.NVIDIA-H100-80GB-HBM3.big: not a MIG"):
        prices.parse_prices({"mig": {H100: {"big": 1.0}}})
    with pytest.raises(PriceError, match=r"gpuPrices.currency: unknown key"):
        prices.parse_prices({"currency": "EUR"})


def test_a_vcpu_hour_has_a_default_price_a_table_may_set_or_make_free() -> None:
    assert prices.CPU_LIST_PRICE.source.startswith("Amazon EC2 c7i.large")
    assert prices.DEFAULT_PRICES.cpu == 0.0446  # $0.08925/h for 2 vCPU
    assert prices.DEFAULT_PRICES.of_cpu(0.5) == 0.0223
    # absent or null: the default; the GPU prices stay as they were
    assert prices.parse_prices({"products": {L4: 0.7}}).cpu == 0.0446
    assert prices.parse_prices({"cpu": None}) == prices.DEFAULT_PRICES
    table = prices.parse_prices({"cpu": 0.05})
    assert (table.cpu, table.of_cpu(2.0), table.products) == (
        0.05, 0.1, prices.DEFAULT_PRICES.products)
    free = prices.parse_prices({"cpu": 0})
    assert (free.cpu, free.of_cpu(4.0)) == (0.0, 0.0)
    for bad in (-0.01, "0.04", True, float("nan"), prices.PRICE_LIMIT):
        with pytest.raises(PriceError, match=r"^gpuPrices.cpu: .* is not a price per hour"):
            prices.parse_prices({"cpu": bad})


# ---- placement: the targets ------------------------------------------------------------

def test_a_13b_float16_generator_goes_to_the_a100_pool() -> None:
    est = need(sh.LLAMA_2_13B, "float16")
    assert est.artifact_weight_bytes == pytest.approx(26.03e9, rel=1e-3)  # 26 GB of weights
    p = placed(pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES))
    assert (p.offer.product, p.resource, p.price_per_hour, p.pinned) == (
        A100, "nvidia.com/gpu", 5.12, False)
    assert p.resources() == {"nvidia.com/gpu": "1"}
    assert p.node_affinity() == {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]}]}]}}
    assert p.message == (f"{A100} (cheapest that fits): needs 53.2 GiB of the 80.0 GiB per "
                         "device, $5.12/h per pod")


def test_its_int8_variant_goes_to_the_cheaper_l4_pool() -> None:
    est = need(sh.LLAMA_2_13B, "dynamic-int8", "text-classification", 512)
    assert est.weight_bytes == pytest.approx(13.5e9, rel=0.01)  # "13 GB"
    assert est.total_bytes == est.steady_bytes  # quantized on the CPU, then moved
    p = placed(pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES))
    assert (p.offer.product, p.price_per_hour) == (L4, 0.80)
    # at the model's whole context (4,096 tokens, what a ModelService without a sequence
    # length is estimated at) it still fits the L4's 22.5 GiB
    full = need(sh.LLAMA_2_13B, "dynamic-int8", "text-classification", None)
    assert 19 * GIB < full.total_bytes < 20 * GIB
    assert placed(pools.choose(full.total_bytes, 1, local_pools(),
                               prices.DEFAULT_PRICES)).offer.product == L4


def test_a_3b_float16_variant_takes_a_mig_slice_where_no_cheaper_gpu_holds_it() -> None:
    est = need(sh.OPEN_LLAMA_3B, "float16", tokens=128)
    assert 8 * GIB < est.total_bytes < 9 * GIB
    # with the L4 pool present it is the cheapest ($0.80/h against $1.76/h for a 1g.10gb)
    assert placed(pools.choose(est.total_bytes, 1, local_pools(),
                               prices.DEFAULT_PRICES)).offer.product == L4
    # without it, a 1g.10gb slice of an H100 rather than a whole A100
    p = placed(pools.choose(est.total_bytes, 1, local_pools(without=(L4,)),
                            prices.DEFAULT_PRICES))
    assert (p.offer.product, p.resource) == (H100, "nvidia.com/mig-1g.10gb")
    assert p.price_per_hour == round(12.29 / 7, 4)
    assert p.to_status() == {"product": H100, "resource": "nvidia.com/mig-1g.10gb",
                             "count": 1, "deviceMemoryBytes": 9536 * 2**20,
                             "pinned": False, "checked": True, "migProfile": "1g.10gb",
                             "pricePerHour": p.price_per_hour}
    # and where the slice is priced below the L4, there with the L4 present too
    cheap = prices.parse_prices({"mig": {H100: {"1g.10gb": 0.5}}})
    assert placed(pools.choose(est.total_bytes, 1, local_pools(), cheap)).offer.profile == (
        "1g.10gb")


def test_a_70b_float16_model_does_not_fit_naming_the_need_and_the_largest_offer() -> None:
    est = need(sh.LLAMA_2_70B, "float16", tokens=None)
    assert est.artifact_weight_bytes == pytest.approx(137.95e9, rel=1e-3)  # "140 GB"
    result = pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES)
    assert isinstance(result, DoesNotFit)
    assert result.reason == "InsufficientGPUMemory"
    assert result.largest is not None and result.largest.product == A100
    assert result.message == ("needs 160.5 GiB of GPU memory, the largest offer is 80.0 GiB "
                              "(NVIDIA-A100-SXM4-80GB)")
    # its weights alone (128.5 GiB) are past any offer
    assert est.weight_bytes > 80 * GIB


# ---- placement: pins, counts, ties ------------------------------------------------------------

def test_pinned_products_are_only_checked() -> None:
    est = need(sh.LLAMA_2_13B, "float16")
    result = pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                          pinned_products=(L4,))
    assert isinstance(result, DoesNotFit) and result.pinned
    assert result.message == ("needs 53.2 GiB of GPU memory, the largest offer among "
                              "nvidia.com/gpu of the pinned products NVIDIA-L4 is 22.5 GiB "
                              "(NVIDIA-L4)")
    small = need(sh.OPEN_LLAMA_3B, "float16", tokens=128)
    pinned = placed(pools.choose(small.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                                 pinned_products=(A100,)))
    assert (pinned.offer.product, pinned.pinned) == (A100, True)  # not moved to the L4
    assert "(pinned)" in pinned.message
    # a pinned product whose GPUs are all in MIG slices offers no whole GPU
    none = pools.choose(small.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                        pinned_products=(H100,))
    assert isinstance(none, DoesNotFit) and "offers no GPU among nvidia.com/gpu" in none.message
    # a pinned MIG resource: that profile only
    mig = placed(pools.choose(small.total_bytes, 2, local_pools(), prices.DEFAULT_PRICES,
                              pinned_resource="nvidia.com/mig-3g.40gb"))
    assert (mig.offer.profile, mig.resources()) == ("3g.40gb", {"nvidia.com/mig-3g.40gb": "2"})


def test_gpu_count_must_fit_on_one_node_and_multiplies_the_price() -> None:
    est = need(sh.OPEN_LLAMA_3B, "float16", tokens=128)
    two = placed(pools.choose(est.total_bytes, 2, local_pools(), prices.DEFAULT_PRICES))
    assert (two.offer.product, two.price_per_hour) == (L4, 1.6)
    eight = placed(pools.choose(est.total_bytes, 8, local_pools(), prices.DEFAULT_PRICES))
    assert eight.offer.product == H100 and eight.offer.profile == "1g.10gb"  # 28 on its node
    nine = pools.choose(est.total_bytes, 29, local_pools(), prices.DEFAULT_PRICES)
    assert isinstance(nine, DoesNotFit)
    assert nine.message == ("needs 29 devices of at least 8.1 GiB on one node, the most any "
                            "node offers is 28")


def test_no_gpu_nodes_and_ties_and_unpriced_offers() -> None:
    empty = pools.choose(GIB, 1, pools.pools_from_nodes([]), prices.DEFAULT_PRICES)
    assert isinstance(empty, DoesNotFit) and empty.largest is None
    assert "the cluster offers no GPU" in empty.message
    offers = [pools.Offer("B-GPU", "nvidia.com/gpu", 48 * GIB, 4, 4, ("n2",)),
              pools.Offer("A-GPU", "nvidia.com/gpu", 48 * GIB, 4, 4, ("n1",)),
              pools.Offer("C-GPU", "nvidia.com/gpu", 24 * GIB, 4, 4, ("n3",)),
              pools.Offer("D-GPU", "nvidia.com/gpu", 96 * GIB, 4, 4, ("n4",))]
    same = prices.Prices({"A-GPU": 1.0, "B-GPU": 1.0, "C-GPU": 1.0})
    assert placed(pools.choose(10 * GIB, 1, offers, same)).offer.product == "C-GPU"
    assert placed(pools.choose(30 * GIB, 1, offers, same)).offer.product == "A-GPU"
    unpriced = placed(pools.choose(60 * GIB, 1, offers, same))  # only D holds it
    assert (unpriced.offer.product, unpriced.price_per_hour) == ("D-GPU", None)
    assert "no price" in unpriced.message


def test_a_pinned_resource_alone_lets_the_operator_choose_the_product() -> None:
    est = need(sh.OPEN_LLAMA_3B, "float16", tokens=128)
    p = placed(pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                            pinned_resource="nvidia.com/gpu"))
    assert (p.offer.product, p.pinned, p.target) == (
        L4, True, pools.Target("nvidia.com/gpu", 1, (L4,)))
    none = pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                        pinned_resource="nvidia.com/mig-7g.80gb")
    assert isinstance(none, DoesNotFit) and none.no_offer
    assert "offers no GPU among nvidia.com/mig-7g.80gb" in none.message


def test_pinned_products_keep_every_pinned_product_that_holds_the_variant() -> None:
    est = need(sh.LLAMA_2_13B, "float16")
    p = placed(pools.choose(est.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                            pinned_products=(L4, A100, H100)))
    # the L4 cannot hold it and the H100 offers no whole GPU: the A100 alone is left
    assert p.target == pools.Target("nvidia.com/gpu", 1, (A100,))
    small = need(sh.OPEN_LLAMA_3B, "float16", tokens=128)
    both = placed(pools.choose(small.total_bytes, 1, local_pools(), prices.DEFAULT_PRICES,
                               pinned_products=(A100, L4)))
    assert both.target.products == (A100, L4)  # as pinned, in the spec's order
    assert both.offer.product == L4 and both.to_status()["products"] == [A100, L4]
    assert both.target.node_affinity() == {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": pools.PRODUCT_LABEL, "operator": "In", "values": [A100, L4]}]}]}}
    assert pools.Target("nvidia.com/gpu", 2).node_affinity() is None


def test_the_watch_cache_keeps_of_a_node_only_what_the_pools_read() -> None:
    nodes_ = local_nodes()
    trimmed = [t for t in (pools.trim_node(n) for n in nodes_) if t is not None]
    assert len(trimmed) == len([n for n in nodes_ if n["metadata"]["labels"].get(
        pools.PRODUCT_LABEL)])
    assert pools.pools_from_nodes(trimmed) == pools.pools_from_nodes(nodes_)
    a100 = next(t for t in trimmed if t["metadata"]["name"] == "gpu-a100-1")
    assert set(a100["status"]["allocatable"]) == {"nvidia.com/gpu"}
    assert all(k.startswith("nvidia.com/") for k in a100["metadata"]["labels"])
    h100 = next(n for n in nodes_ if n["metadata"]["name"] == "gpu-h100-mig-1")
    assert len(pools.pools_from_nodes([pools.trim_node(h100) or {}]).offers) == 3
    cordoned = {**h100, "spec": {**h100.get("spec", {}), "unschedulable": True}}
    assert pools.pools_from_nodes([pools.trim_node(cordoned) or {}]).offers == ()
    cpu = next(n for n in nodes_ if not n["metadata"]["labels"].get(pools.PRODUCT_LABEL))
    assert pools.trim_node(cpu) is None
