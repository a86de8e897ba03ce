"""kubectl msv: the rendering of recorded ModelServices and the annotations each verb writes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from msv_operator import kubectl_msv as plugin
from msv_operator import rollout as ro

NOW = datetime(2026, 11, 30, 14, 0, 5, tzinfo=UTC)

RECORDED: dict[str, Any] = {
    "apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
    "metadata": {"name": "sentiment", "namespace": "demo", "annotations": {}},
    "spec": {"variants": [{"name": "baseline"}, {"name": "int8"}],
             "traffic": [{"variant": "baseline", "weight": 100}],
             "rollout": {"candidate": "int8", "analysis": {"failureLimit": 2}}},
    "status": {
        "traffic": "baseline=75,int8=25",
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllVariantsReady"}],
        "variants": [
            {"name": "baseline", "replicas": 1, "readyReplicas": 1, "weight": 75,
             "p95Ms": 8.1, "rps": 12.5, "errorRate": 0.0, "parameters": 4386,
             "sizeBytes": 17544, "cpuMillicores": 210, "memoryBytes": 314572800},
            {"name": "int8", "replicas": 1, "readyReplicas": 1, "weight": 25,
             "p95Ms": 8.9, "rps": 4.1, "errorRate": 0.0, "agreement": 0.9981,
             "optimization": "dynamic-int8", "sizeBytes": 6000}],
        "rollout": {
            "candidate": "int8", "stable": "baseline=100", "phase": "Progressing",
            "reason": "", "message": "step 2/4: every gate holds", "step": 2,
            "steps": [10, 25, 50, 100], "startedAt": "2026-11-30T13:58:00Z",
            "stepStartedAt": "2026-11-30T13:59:30Z", "failures": 1,
            "lastAnalysis": {"time": "2026-11-30T14:00:00Z", "step": 2, "verdict": "Failed",
                             "requests": 73, "minRequests": 50,
                             "message": "latency 1.35 (threshold <= 1.2)",
                             "gates": [
                                 {"name": "latency", "value": 1.35, "threshold": 1.2,
                                  "comparison": "<=", "passed": False},
                                 {"name": "errorRate", "value": 0.0, "threshold": 0.01,
                                  "comparison": "<=", "passed": True},
                                 {"name": "agreement", "value": None, "threshold": 0.99,
                                  "comparison": ">=", "passed": None}]},
            "history": [
                {"time": "2026-11-30T13:58:00Z", "phase": "Pending", "step": 0,
                 "message": "rollout of int8 started"},
                {"time": "2026-11-30T13:59:30Z", "phase": "Progressing", "step": 2,
                 "message": "step 2/4: candidate int8 at 25%"}],
            "handledAction": "retry/2026-11-30T13:57:00Z"}}}


def test_get_shows_steps_weights_gates_history_and_variants() -> None:
    out = plugin.render(RECORDED)
    assert "ModelService demo/sentiment   Ready=True (AllVariantsReady)   traffic " \
           "baseline=75,int8=25" in out
    assert "candidate int8 from baseline=100" in out
    assert "step:     2/4   steps (% to candidate): 10 [25] 50 100" in out
    assert "failures: 1 (failureLimit 2)" in out
    assert "Last analysis 2026-11-30T14:00:00Z (step 2): Failed, 73/50 candidate requests" in out
    lines = out.splitlines()
    gate = next(line for line in lines if line.strip().startswith("latency"))
    assert gate.split() == ["latency", "1.35", "<=", "1.2", "NO"]
    agreement = next(line for line in lines if line.strip().startswith("agreement"))
    assert agreement.split()[-2:] == ["no", "data"]
    assert "last action handled: retry/2026-11-30T13:57:00Z" in out
    history = next(i for i, line in enumerate(lines) if line == "History:")
    assert "rollout of int8 started" in lines[history + 2]
    int8 = next(line for line in lines if line.strip().startswith("int8 "))
    # a status written before shares existed: the share is "-"
    assert int8.split()[:9] == ["int8", "25", "-", "1/1", "-", "8.9", "4.1", "0.0", "0.9981"]
    assert "5.9KiB" in int8 and "dynamic-int8" in int8
    base = next(line for line in lines if line.strip().startswith("baseline "))
    assert "300.0MiB" in base and "210" in base


def test_get_shows_the_agreement_interval_and_the_comparisons_still_needed() -> None:
    gates = [{"name": "latency", "value": 1.0, "threshold": 1.2, "comparison": "<=",
              "passed": True},
             {"name": "agreement", "value": 1.0, "threshold": 0.9, "comparison": ">=",
              "samples": 20, "confidence": 0.95, "lowerBound": 0.8389, "upperBound": 1.0,
              "samplesNeeded": 15, "passed": None}]
    rollout = {**RECORDED["status"]["rollout"],
               "lastAnalysis": {"time": "2026-11-30T14:00:00Z", "step": 2,
                                "verdict": "Undecided", "requests": 73, "minRequests": 50,
                                "gates": gates}}
    ms = {**RECORDED, "status": {**RECORDED["status"], "rollout": rollout}}
    lines = plugin.render(ms).splitlines()
    assert "Last analysis 2026-11-30T14:00:00Z (step 2): Undecided, 73/50 candidate " \
           "requests" in lines
    row = next(line for line in lines if line.strip().startswith("agreement "))
    assert row.split() == ["agreement", "1.0", ">=", "0.9", "undecided"]
    assert "  agreement: 20 comparisons, 95% interval [0.8389, 1.0]; about 15 more needed" \
        in lines
    gates[1] = {**gates[1], "value": 0.9, "samplesNeeded": None}
    out = plugin.render(ms)
    assert "; not reachable (the agreement is at or too close to the threshold)" in out
    gates[1] = {**gates[1], "passed": True, "samples": 400, "lowerBound": 0.95}
    del gates[1]["samplesNeeded"]
    lines = plugin.render(ms).splitlines()
    assert "  agreement: 400 comparisons, 95% interval [0.95, 1.0]" in lines
    assert next(line for line in lines
                if line.strip().startswith("agreement ")).split()[-1] == "yes"


def test_get_shows_the_brownout_replicas_and_a_blind_autoscaler() -> None:
    ms = {**RECORDED,
          "spec": {"autoscaling": {"maxReplicas": 2, "brownout": {"variant": "int8"}}},
          "status": {
              "traffic": "baseline=60,int8=40",
              "conditions": [{"type": "Ready", "status": "True", "reason": "AllVariantsReady"},
                             {"type": "AutoscalingBlind", "status": "True",
                              "reason": "PrometheusUnavailable",
                              "message": "brownout cannot read the stable p95"}],
              "variants": [{"name": "baseline", "replicas": 2, "readyReplicas": 1,
                            "desiredReplicas": 2, "minReplicas": 1, "maxReplicas": 2,
                            "weight": 60}],
              "brownout": {"variant": "int8", "stable": "baseline", "phase": "Engaged",
                           "reason": "MetricsUnavailable", "since": "2026-11-30T14:00:00Z",
                           "share": 40, "maxShare": 40, "p95Ms": 310.2, "objectiveMs": 200.0,
                           "releaseBelowMs": 160.0, "stableReplicas": 2,
                           "stableMaxReplicas": 2, "message": "metrics unavailable"}}}
    out = plugin.render(ms)
    assert "Brownout: variant int8 for stable baseline" in out
    assert "phase:    Engaged (MetricsUnavailable) since 2026-11-30T14:00:00Z" in out
    assert "share:    40% (maxShare 40)" in out
    assert "p95:      310.2 ms (objective 200.0 ms, release below 160.0 ms" in out
    assert "stable:   2/2 replicas (current/max)" in out
    assert "Autoscaling is blind (PrometheusUnavailable): brownout cannot read" in out
    base = next(line for line in out.splitlines() if line.strip().startswith("baseline "))
    assert base.split()[:5] == ["baseline", "60", "-", "1/2", "1..2"]
    pending = {**ms, "status": {}}
    assert "Brownout: not evaluated yet" in plugin.render(pending)
    assert "Brownout" not in plugin.render({**RECORDED, "spec": {}})


def test_get_shows_which_variant_the_operator_chose_and_why() -> None:
    chosen = {**RECORDED,
              "spec": {"autoscaling": {"brownout": {"latencyObjectiveMs": 200}}},
              "status": {"brownout": {
                  "variant": "int8", "chosenBy": "frontier",
                  "choice": "on the Pareto frontier with the lowest cost per 1,000 requests",
                  "stable": "baseline", "phase": "Engaged", "share": 50}}}
    out = plugin.render(chosen)
    assert "Brownout: variant int8 for stable baseline" in out
    assert "chosen:   by frontier: on the Pareto frontier with the lowest cost" in out
    none = {**chosen, "status": {"brownout": {
        "stable": "baseline", "phase": "Inactive", "reason": "NoEligibleVariant",
        "choice": "int8: agreement not measured below minAgreement 0.95"}}}
    out = plugin.render(none)
    assert "Brownout: variant (none eligible) for stable baseline" in out
    assert "chosen:   none: int8: agreement not measured" in out


def test_get_without_a_rollout_or_before_the_operator_wrote_one() -> None:
    no = {**RECORDED, "spec": {}, "status": {"traffic": "baseline=100"}}
    assert "Rollout: none" in plugin.render(no)
    early = {**RECORDED, "status": {}}
    assert "not started yet" in plugin.render(early)


def test_verbs_write_only_the_steering_annotations() -> None:
    assert plugin.steering_annotations("pause", NOW) == {ro.ANNOTATION_PAUSED: "true"}
    assert plugin.steering_annotations("resume", NOW) == {ro.ANNOTATION_PAUSED: None}
    for verb in ("promote", "abort", "retry"):
        assert plugin.steering_annotations(verb, NOW) == {
            ro.ANNOTATION_ACTION: f"{verb}/2026-11-30T14:00:05Z"}
    with pytest.raises(ValueError):
        plugin.steering_annotations("explode", NOW)


class RecordedClient:
    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.obj = obj
        self.patches: list[tuple[str, str, dict[str, str | None]]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str
            ) -> dict[str, Any] | None:
        return self.obj

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: dict[str, str | None]) -> dict[str, Any]:
        self.patches.append((namespace, name, annotations))
        return self.obj or {}


def test_main_prints_and_annotates(capsys: pytest.CaptureFixture[str]) -> None:
    client = RecordedClient(RECORDED)
    assert plugin.main(["get", "sentiment", "-n", "demo"], client) == 0  # type: ignore[arg-type]
    assert "candidate int8" in capsys.readouterr().out
    assert plugin.main(["pause", "sentiment", "-n", "demo"], client) == 0  # type: ignore[arg-type]
    assert client.patches == [("demo", "sentiment", {ro.ANNOTATION_PAUSED: "true"})]
    missing = RecordedClient(None)
    assert plugin.main(["abort", "nope", "-n", "demo"], missing) == 1  # type: ignore[arg-type]
    assert "not found" in capsys.readouterr().err and missing.patches == []


def test_watch_prints_the_live_view_each_round(capsys: pytest.CaptureFixture[str]) -> None:
    client = RecordedClient(RECORDED)
    shown = plugin.watch(client, "demo", "sentiment", every=0.0, rounds=2)  # type: ignore[arg-type]
    assert shown == 0
    out = capsys.readouterr().out
    assert out.count(plugin.CLEAR) == 2 and out.count("candidate int8 from") == 2


@pytest.mark.parametrize("argv", [["--help"], ["promote", "--help"], ["get", "--help"]])
def test_help_prints(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        plugin.main(argv, RecordedClient(None))  # type: ignore[arg-type]
    assert exit_.value.code == 0
    assert "usage: kubectl msv" in capsys.readouterr().out


def test_get_shows_the_requested_weight_beside_the_share_delivered_and_why_they_differ() -> None:
    message = ("traffic baseline=90,int8=10: without a gateway requests split by ready pods, "
               "and spec.replicas=2 allows no split within ±5 points: int8 at 10% gets 33% "
               "(1 of 3 pods); add a gateway (spec.gateway) for exact weights, or raise "
               "spec.replicas to 6")
    ms = {**RECORDED, "spec": {}, "status": {
        "traffic": "baseline=90,int8=10", "shares": "baseline=67,int8=33",
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllVariantsReady"},
                       {"type": "Progressing", "status": "False",
                        "reason": "ShareNotRepresentable", "message": message}],
        "variants": [{"name": "baseline", "replicas": 2, "readyReplicas": 2,
                      "desiredReplicas": 2, "weight": 90, "share": 67},
                     {"name": "int8", "replicas": 1, "readyReplicas": 1,
                      "desiredReplicas": 1, "weight": 10, "share": 33}]}}
    out = plugin.render(ms)
    lines = out.splitlines()
    assert lines[0].endswith("traffic baseline=90,int8=10   shares baseline=67,int8=33")
    assert lines[1] == f"Shares differ from the weights (ShareNotRepresentable): {message}"
    header = next(line for line in lines if line.strip().startswith("NAME"))
    assert header.split()[:3] == ["NAME", "WEIGHT", "SHARE"]
    int8 = next(line for line in lines if line.strip().startswith("int8 "))
    assert int8.split()[:4] == ["int8", "10", "33", "1/1"]
    # nothing serving: said on the first line
    none = {**ms, "status": {**ms["status"], "shares": "baseline=0,int8=0 (no ready endpoints)",
                             "conditions": ms["status"]["conditions"][:1]}}
    first = plugin.render(none).splitlines()
    assert first[0].endswith("shares baseline=0,int8=0 (no ready endpoints)")
    assert not first[1].startswith("Shares differ")


GPU: dict[str, Any] = {
    "apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
    "metadata": {"name": "llm", "namespace": "demo"},
    "spec": {"gpu": {"count": 1}},
    "status": {
        "traffic": "fp16=90,int8=10,big=0",
        "conditions": [{"type": "Ready", "status": "False", "reason": "InsufficientGPUMemory",
                        "message": "variant big: needs 135.0 GiB of GPU memory, the largest "
                                   "offer is 80.0 GiB (NVIDIA-A100-SXM4-80GB)"}],
        "variants": [
            {"name": "fp16", "replicas": 2, "readyReplicas": 2, "weight": 90, "p95Ms": 41.0,
             "rps": 30.0, "gpuMemory": {"totalBytes": 30279519232},
             "placement": {"product": "NVIDIA-A100-SXM4-80GB", "resource": "nvidia.com/gpu",
                           "count": 1, "pricePerHour": 5.12, "pinned": False,
                           "checked": True},
             "costPerHour": 10.24, "costPer1kRequests": 0.094815, "pareto": "frontier"},
            {"name": "int8", "replicas": 1, "readyReplicas": 1, "weight": 10, "p95Ms": 38.0,
             "rps": 3.0, "agreement": 0.97,
             "gpuMemory": {"totalBytes": 20937965568, "measuredBytes": 16106127360},
             "placement": {"product": "NVIDIA-H100-80GB-HBM3", "migProfile": "2g.20gb",
                           "resource": "nvidia.com/mig-2g.20gb", "count": 1,
                           "pricePerHour": 3.5114, "pinned": False, "checked": False},
             "costPerHour": 3.5114, "costPer1kRequests": 0.325130, "pareto": "dominated",
             "dominatedBy": ["fp16"]},
            {"name": "big", "replicas": 0, "readyReplicas": 0, "weight": 0,
             "gpuMemory": {"totalBytes": 144955146240}, "pareto": "unmeasured"}]}}


def test_get_shows_where_each_gpu_variant_runs_what_it_costs_and_the_frontier() -> None:
    out = plugin.render(GPU)
    lines = out.splitlines()
    assert ("No GPU pool holds a variant (InsufficientGPUMemory): variant big: needs 135.0 GiB "
            "of GPU memory, the largest offer is 80.0 GiB (NVIDIA-A100-SXM4-80GB)") in lines
    table = lines.index("Placement and cost (US dollars; MEM: GPU memory needed, "
                        "estimated/measured):")
    assert lines[table + 1].split() == ["NAME", "ON", "MEM", "$/H", "$/1K", "PARETO"]
    rows = {line.split()[0]: line.split() for line in lines[table + 2:]}
    assert rows["fp16"] == ["fp16", "NVIDIA-A100-SXM4-80GB", "x1", "28.2GiB/-", "10.24",
                            "0.0948", "frontier"]
    assert rows["int8"] == ["int8", "NVIDIA-H100-80GB-HBM3", "MIG", "2g.20gb", "x1", "(not",
                            "checked)", "19.5GiB/15.0GiB", "3.51", "0.3251", "dominated", "by",
                            "fp16"]
    assert rows["big"] == ["big", "-", "135.0GiB/-", "-", "-", "unmeasured"]
    # a ModelService without GPU fit has no such table
    assert "Placement and cost" not in plugin.render(RECORDED)


def test_get_shows_a_cpu_variants_request_and_cost_and_a_variant_being_estimated() -> None:
    cpu = {**GPU, "spec": {}, "status": {"variants": [
        {"name": "a", "replicas": 2, "weight": 100, "rps": 20.0,
         "placement": {"cpu": "500m", "pricePerHour": 0.0223}, "costPerHour": 0.0446,
         "costPer1kRequests": 0.000619, "pareto": "frontier"}]}}
    lines = plugin.render(cpu).splitlines()
    table = lines.index("Placement and cost (US dollars; MEM: GPU memory needed, "
                        "estimated/measured):")
    assert lines[table + 2].split() == ["a", "CPU", "500m", "-", "0.0446", "0.0006", "frontier"]
    waiting = {**GPU, "status": {"variants": [
        {"name": "fp16", "replicas": 0, "weight": 100,
         "placement": {"pending": True, "count": 1, "pinned": False}, "pareto": "unmeasured"},
        {"name": "int8", "replicas": 0, "weight": 0,
         "placement": {"pending": True, "resource": "nvidia.com/gpu", "count": 1,
                       "product": "NVIDIA-L4", "pinned": True, "checked": False},
         "pareto": "unmeasured"}]}}
    lines = plugin.render(waiting).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[-2:]}
    assert rows["fp16"][:2] == ["fp16", "(estimating)"]
    assert rows["int8"][:4] == ["int8", "NVIDIA-L4", "x1", "(estimating)"]


def test_get_shows_where_each_variants_start_went() -> None:
    ms = copy.deepcopy(RECORDED)
    ms["status"]["variants"][0]["startup"] = {
        "pod": "sentiment-baseline-7d9f8c6b5-x2k4q", "scheduledSeconds": 0, "imageSeconds": 2,
        "fetchSeconds": 0.412, "fetchedBytes": 1183744, "cacheHit": False, "loadSeconds": 4,
        "totalSeconds": 7}
    lines = plugin.render(ms).splitlines()
    at = lines.index("Start-up of each variant's newest Ready pod (seconds):")
    assert lines[at + 1].split() == ["NAME", "TOTAL", "SCHEDULED", "IMAGE", "FETCH", "LOAD",
                                     "POD"]
    assert lines[at + 2].split() == ["baseline", "7", "0", "2", "0.412", "(1.1MiB)", "4",
                                     "sentiment-baseline-7d9f8c6b5-x2k4q"]
    assert lines[at + 3].split()[0] == "int8"  # not started yet: its cells are empty
    assert "Start-up" not in plugin.render(RECORDED)


def test_built_variants_show_provenance_and_the_offline_report() -> None:
    ms = {"metadata": {"name": "s", "namespace": "ml"}, "status": {"variants": [
        {"name": "baseline", "weight": 100, "p95Ms": 12.0},
        {"name": "small", "weight": 0, "build": {"phase": "Published", "key": "f" * 64,
                                                 "readyToRollOut": True},
         "provenance": {"sourceSha256": "a" * 64, "dataSha256": "b" * 64,
                        "artifactSha256": "c" * 64, "report": {
                            "latencyMsBatch1": 5.0, "baselineLatencyMsBatch1": 9.0,
                            "agreement": 0.991, "parameters": 1000}}},
        {"name": "tiny", "weight": 0, "build": {"phase": "Running", "stage": "training",
                                                "step": 5, "total": 50, "etaSeconds": 40}}]}}
    text = plugin.render(ms)
    assert "Built variants" in text
    small = next(ln for ln in text.splitlines() if ln.strip().startswith("small")
                 and "Published" in ln)
    assert "cccccccccccc" in small and "5/9" in small and "0.991" in small and "ready" in small
    assert "training 5/50 eta 40s" in text


def test_rollout_sets_the_candidate_in_spec() -> None:

    class Api:
        patched: list[Any] = []

        def get(self, *args: Any) -> dict[str, Any]:
            return {"metadata": {"name": "s"}}

        def merge_patch(self, *args: Any) -> None:
            self.patched.append(args)

    api = Api()
    assert plugin.main(["rollout", "s", "small", "-n", "ml"], client=api) == 0  # type: ignore[arg-type]
    assert api.patched[0][-1] == {"spec": {"rollout": {"candidate": "small"}}}


def test_get_shows_a_variant_at_zero_as_idle_not_as_unready() -> None:
    ms = copy.deepcopy(RECORDED)
    ms["status"]["variants"][1].update(replicas=0, readyReplicas=0, desiredReplicas=0,
                                        scaledToZero=True, weight=0)
    ms["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "ScaledToZero"}]
    rows = {line.split()[0]: line for line in plugin.render(ms).splitlines()
            if line.startswith("  ") and line.split() and line.split()[0] in ("baseline", "int8")}
    assert "0 (idle)" in rows["int8"]
    assert "1/1" in rows["baseline"] and "idle" not in rows["baseline"]
