"""``kubectl msv``: a kubectl plugin (console script ``kubectl-msv``) to watch and steer rollouts.

* ``kubectl msv get NAME [-n NS] [-w]`` prints the rollout (steps, current weights, each gate's
  measured value against its threshold, the agreement gate's confidence interval and the
  comparisons it still needs, the history) and the per-variant table, with each
  variant's requested weight beside the share it actually receives, and where each runs (a
  GPU pool, or the CPU its pods request), its GPU memory (the estimate, then what its pods
  reserved), its cost per hour and per 1,000 requests, its mark on the Pareto frontier, and
  where the start of each variant's newest Ready pod went (``status.variants[].startup``),
  and with spec.model.prewarm how many nodes' model caches hold the artifact
  (``status.modelCache.prewarm``) (``-w``: again every 2 s, a live view, until Ctrl-C);
* ``kubectl msv pause|resume NAME`` sets/removes ``serving.modelservice.dev/rollout-paused``;
* ``kubectl msv promote|abort|retry NAME`` sets the one-shot
  ``serving.modelservice.dev/rollout-action: <verb>/<timestamp>`` (the operator handles it once
  and records it in ``status.rollout.handledAction``).

Only annotations are written, never the spec: Argo CD and Flux see no drift in what they own.
Uses the user's kubeconfig (``$KUBECONFIG``) through ``kube``. ``render`` is pure, so it is
tested on recorded objects; it reads the status through the operator's own types
(``state.RolloutStatus``, ``state.BrownoutStatus``, ``state.VariantStatus``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from msv_contract.api import API_VERSION, GROUP, KIND, SINGULAR
from msv_operator import kube
from msv_operator.conditions import rfc3339
from msv_operator.pools import INSUFFICIENT
from msv_operator.rollout import ANNOTATION_ACTION, ANNOTATION_PAUSED
from msv_operator.shares import SHARE_NOT_REPRESENTABLE
from msv_operator.state import (
    ABSENT,
    Analysis,
    BrownoutStatus,
    Gate,
    RolloutStatus,
    VariantStatus,
    present,
)

FIELD_MANAGER = "kubectl-msv"
STEERING = ("promote", "abort", "pause", "resume", "retry")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> list[str]:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def _size(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return None


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when its key is missing."""
    return default if value is None else value


def _condition(ms: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in (ms.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return {}


def render(ms: Mapping[str, Any]) -> str:
    """The text ``kubectl msv get`` prints for one ModelService."""
    meta = ms.get("metadata") or {}
    st = ms.get("status") or {}
    ready = _condition(ms, "Ready")
    lines = [f"ModelService {meta.get('namespace')}/{meta.get('name')}   "
             f"Ready={ready.get('status', '?')} ({ready.get('reason', '-')})   "
             f"traffic {st.get('traffic', '-')}   shares {st.get('shares', '-')}"]
    if ready.get("reason") == INSUFFICIENT:
        lines.append(f"No GPU pool holds a variant ({INSUFFICIENT}): {ready.get('message', '')}")
    progressing = _condition(ms, "Progressing")
    if progressing.get("reason") == SHARE_NOT_REPRESENTABLE:
        lines.append(f"Shares differ from the weights ({SHARE_NOT_REPRESENTABLE}): "
                     f"{progressing.get('message', '')}")
    spec_rollout = (ms.get("spec") or {}).get("rollout")
    if not st.get("rollout"):
        lines.append("Rollout: none" if not spec_rollout else
                     "Rollout: not started yet (the operator has not written status.rollout)")
    else:
        lines += _rollout_lines(RolloutStatus.from_dict(st["rollout"]), spec_rollout or {})
    lines += _brownout_lines(ms)
    lines += _prewarm_lines(ms)
    variants = [VariantStatus.from_dict(v) for v in st.get("variants") or ()]
    if variants:
        lines.append("Variants:")
        lines += _table(
            ["NAME", "WEIGHT", "SHARE", "READY/DESIRED", "HPA", "P95(ms)", "RPS", "ERRORS",
             "AGREEMENT", "PARAMS", "SIZE", "CPU(m)/POD", "MEM/POD", "OPTIMIZATION"],
            [[v.name, v.weight, v.share,
              _replicas(v),
              None if v.max_replicas is None else f"{v.min_replicas}..{v.max_replicas}",
              v.p95_ms, v.rps, v.error_rate, v.agreement, v.parameters, _size(v.size_bytes),
              v.cpu_millicores, _size(v.memory_bytes), v.optimization] for v in variants])
    built = [v for v in variants if v.build or v.provenance]
    if built:
        lines.append("Built variants (provenance and offline report, CPU latency in ms "
                     "vs the source):")
        lines += _table(["NAME", "BUILD", "PROGRESS", "KEY", "SOURCE", "DATA", "ARTIFACT",
                         "SIZE", "PARAMS", "LAT@1", "LAT@8", "AGREEMENT", "ACCURACY",
                         "ROLL OUT"],
                        [[v.name, *_built(v)] for v in built])
        for v in built:
            message = (v.build or {}).get("message")
            if message:
                lines.append(f"  {v.name}: {message}")
    if any(v.startup for v in variants):
        lines.append("Start-up of each variant's newest Ready pod (seconds):")
        lines += _table(["NAME", "TOTAL", "SCHEDULED", "IMAGE", "FETCH", "LOAD", "POD"],
                        [[v.name, *_startup(v)] for v in variants])
    if any(v.placement or v.gpu_memory for v in variants):
        lines.append("Placement and cost (US dollars; MEM: GPU memory needed, "
                     "estimated/measured):")
        lines += _table(["NAME", "ON", "MEM", "$/H", "$/1K", "PARETO"],
                        [[v.name, _placed(v), _gpu_memory(v), _hourly(v.cost_per_hour),
                          _money(v.cost_per_1k_requests, 4), _pareto(v)] for v in variants])
    return "\n".join(lines)


def _short(sha: Any) -> str | None:
    return f"{str(sha)[:12]}" if sha else None


def _versus(report: Mapping[str, Any], mine: str, base: str) -> str | None:
    if report.get(mine) is None:
        return None
    other = report.get(base)
    return f"{report[mine]:g}" + (f"/{other:g}" if isinstance(other, int | float) else "")


def _built(v: VariantStatus) -> list[Any]:
    """A built variant's row: its Job's phase and progress, the hashes of its provenance and
    its offline report's headline numbers."""
    b, p = v.build or {}, v.provenance or {}
    report = p.get("report") or {}
    progress = (f"{b.get('stage', '')} {b.get('step', '?')}/{b.get('total', '?')}"
                + (f" eta {b['etaSeconds']:g}s" if b.get("etaSeconds") is not None else "")
                if b.get("phase") == "Running" else None)
    ready = b.get("readyToRollOut")
    return [b.get("phase"), progress, _short(b.get("key") or p.get("key")),
            _short(p.get("sourceSha256")), _short(p.get("dataSha256")),
            _short(p.get("artifactSha256")), _size(report.get("sizeBytes")),
            report.get("parameters"),
            _versus(report, "latencyMsBatch1", "baselineLatencyMsBatch1"),
            _versus(report, "latencyMsBatch8", "baselineLatencyMsBatch8"),
            report.get("agreement"), report.get("accuracy"),
            None if ready is None else ("ready" if ready else "gates not met")]


def _replicas(v: VariantStatus) -> str:
    """READY/DESIRED; ``0 (idle)`` for a variant at zero by its idle policy."""
    if v.scaled_to_zero:
        return "0 (idle)"
    return f"{_or(v.ready_replicas, 0)}/{_or(v.desired_replicas, _or(v.replicas, 0))}"


def _startup(v: VariantStatus) -> list[Any]:
    """TOTAL, SCHEDULED, IMAGE, FETCH (with the bytes or ``cache hit``), LOAD, POD."""
    st = v.startup or {}
    fetch = st.get("fetchSeconds")
    if fetch is not None and st.get("cacheHit"):
        fetch = f"{fetch} (cache hit)"
    elif fetch is not None and _size(st.get("fetchedBytes")):
        fetch = f"{fetch} ({_size(st.get('fetchedBytes'))})"
    return [st.get("totalSeconds"), st.get("scheduledSeconds"), st.get("imageSeconds"), fetch,
            st.get("loadSeconds"), st.get("pod")]


def _placed(v: VariantStatus) -> str | None:
    """``NVIDIA-L4 x1``, ``NVIDIA-H100-80GB-HBM3 MIG 1g.10gb x1``; the pinned products that
    hold it when several may; ``(not checked)`` when the fit was not, ``(estimating)`` while
    its artifact is read; ``CPU 500m`` without GPUs."""
    p = v.placement or {}
    if not p:
        return None
    if "cpu" in p:
        return f"CPU {p['cpu']}"
    if p.get("pending") and "resource" not in p:
        return "(estimating)"
    products = p.get("products") or ([p["product"]] if p.get("product") else [])
    where = "|".join(str(x) for x in products) or str(p.get("resource", "?"))
    if p.get("migProfile"):
        where += f" MIG {p['migProfile']}"
    text = f"{where} x{p.get('count', '?')}"
    if p.get("pending"):
        return f"{text} (estimating)"
    return text if p.get("checked", True) else f"{text} (not checked)"


def _gpu_memory(v: VariantStatus) -> str | None:
    m = v.gpu_memory or {}
    need, measured = _size(m.get("totalBytes")), _size(m.get(VariantStatus.MEASURED_GPU_MEMORY))
    if need is None and measured is None:
        return None
    return f"{need or '-'}/{measured or '-'}"


def _money(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _hourly(value: float | None) -> str | None:
    """Cents for a GPU's hour, four digits for a few CPUs' (0.0223)."""
    return _money(value, 2 if value is None or value == 0 or value >= 0.1 else 4)


def _pareto(v: VariantStatus) -> str | None:
    if v.pareto is None:
        return None
    return f"{v.pareto} by {','.join(v.dominated_by)}" if v.dominated_by else v.pareto


def _passed(g: Gate) -> str:
    passed = present(g.passed)
    if passed is None:
        return "undecided" if present(g.value) is not None else "no data"
    return "yes" if passed else "NO"


def _interval(g: Gate) -> str:
    """``agreement: 20 comparisons, 95% interval [0.8389, 1.0]; about 15 more needed``."""
    level = "" if g.confidence is None else f"{g.confidence * 100:g}% "
    text = f"  {g.name}: {g.samples} comparisons, {level}interval [{g.lower_bound}, " \
           f"{g.upper_bound}]"
    if g.samples_needed is ABSENT:
        return text
    needed = present(g.samples_needed)
    return text + (f"; about {needed} more needed" if needed is not None else
                   "; not reachable (the agreement is at or too close to the threshold)")


def _rollout_lines(r: RolloutStatus, spec_rollout: Mapping[str, Any]) -> list[str]:
    """The rollout block: phase, steps, the last analysis's gates, the history."""
    steps = [int(s) for s in r.steps or ()]
    step = int(r.step or 0)
    marked = " ".join(f"[{s}]" if i + 1 == step else str(s) for i, s in enumerate(steps))
    limit = (spec_rollout.get("analysis") or {}).get("failureLimit", 2)
    reason = f" ({r.reason})" if r.reason else ""
    lines = [
        f"Rollout: candidate {r.candidate} from {r.stable}",
        f"  phase:    {r.phase}{reason}",
        f"  step:     {step}/{len(steps)}   steps (% to candidate): {marked}",
        f"  failures: {_or(r.failures, 0)} (failureLimit {limit})",
        f"  started:  {_or(r.started_at, '-')}   step started: {_or(r.step_started_at, '-')}",
        f"  message:  {_or(r.message, '')}",
    ]
    if r.handled_action:
        lines.append(f"  last action handled: {r.handled_action}")
    last = r.last_analysis
    if last is not None and last != Analysis():
        requests = (f", {last.requests}/{last.min_requests} candidate requests"
                    if last.requests is not None else "")
        lines.append(f"Last analysis {last.time} (step {last.step}): {last.verdict}{requests}")
        if last.message:
            lines.append(f"  note: {last.message}")
        if last.gates:
            lines += _table(
                ["GATE", "VALUE", "THRESHOLD", "PASSED"],
                [[g.name, present(g.value), f"{g.comparison} {g.threshold}", _passed(g)]
                 for g in last.gates])
            lines += [_interval(g) for g in last.gates
                      if g.samples is not None and present(g.value) is not None]
    if r.history:
        lines.append("History:")
        lines += _table(["TIME", "PHASE", "STEP", "MESSAGE"],
                        [[h.time, h.phase, h.step, h.message] for h in r.history])
    return lines


def _brownout_lines(ms: Mapping[str, Any]) -> list[str]:
    """The brownout block (only when the spec asks for one) and a blind autoscaler."""
    lines: list[str] = []
    stored = (ms.get("status") or {}).get("brownout")
    spec_b = ((ms.get("spec") or {}).get("autoscaling") or {}).get("brownout")
    if stored:
        b = BrownoutStatus.from_dict(stored)
        reason = f" ({b.reason})" if b.reason else ""
        p95 = "-" if b.p95_ms is ABSENT else b.p95_ms
        lines.append(f"Brownout: variant {_or(b.variant, '(none eligible)')} for stable "
                     f"{b.stable}")
        if b.chosen_by:
            lines.append(f"  chosen:   by {b.chosen_by}: {_or(b.choice, '')}")
        elif b.choice:
            lines.append(f"  chosen:   none: {b.choice}")
        lines += [
            f"  phase:    {b.phase}{reason} since {_or(b.since, '-')}",
            f"  share:    {_or(b.share, 0)}% (maxShare {_or(b.max_share, '-')})",
            f"  p95:      {p95} ms (objective {b.objective_ms} ms, "
            f"release below {b.release_below_ms} ms; measured {_or(b.measured_at, '-')})",
            f"  stable:   {_or(b.stable_replicas, '-')}/{_or(b.stable_max_replicas, '-')} "
            "replicas (current/max)",
            f"  message:  {_or(b.message, '')}",
        ]
    elif spec_b:
        lines.append("Brownout: not evaluated yet (the operator has not written status.brownout)")
    blind = _condition(ms, "AutoscalingBlind")
    if blind.get("status") == "True":
        lines.append(f"Autoscaling is blind ({blind.get('reason')}): {blind.get('message')}")
    return lines


def _prewarm_lines(ms: Mapping[str, Any]) -> list[str]:
    """``status.modelCache.prewarm`` (spec.model.prewarm): how many nodes hold the artifact."""
    p = ((ms.get("status") or {}).get("modelCache") or {}).get("prewarm")
    if not isinstance(p, Mapping):
        return []
    warmed = p.get("limitedTo", p.get("nodes", 0))
    line = (f"Model cache prewarm: {p.get('succeeded', 0)}/{warmed} node(s) hold "
            f"{_short(p.get('artifact')) or '-'}")
    if p.get("limitedTo") is not None:
        line += f" (limited to {p['limitedTo']} of {p.get('nodes')} eligible nodes)"
    if p.get("failed"):
        line += f", {p['failed']} failed (see the ModelCachePrewarmFailed Events)"
    if p.get("pending"):
        line += f", pending on {', '.join(str(n) for n in p['pending'])}"
    return [line]


def steering_annotations(verb: str, now: datetime) -> dict[str, str | None]:
    """The annotation patch of a steering verb."""
    if verb == "pause":
        return {ANNOTATION_PAUSED: "true"}
    if verb == "resume":
        return {ANNOTATION_PAUSED: None}
    if verb in ("promote", "abort", "retry"):
        return {ANNOTATION_ACTION: f"{verb}/{rfc3339(now)}"}
    raise ValueError(f"unknown verb {verb!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl msv", description="Watch and steer ModelService rollouts.")
    sub = parser.add_subparsers(dest="verb", required=True)
    helps = {"get": "show the rollout (steps, weights, gates, history) and the variants",
             "promote": "promote the candidate to 100%% now (skips the remaining gates)",
             "abort": "stop the rollout; traffic goes back to spec.traffic",
             "pause": "hold the rollout at its current weights",
             "resume": "continue a paused rollout (the interrupted step starts over)",
             "retry": "start a rolled-back or aborted rollout again",
             "rollout": "start a rollout of VARIANT (sets spec.rollout.candidate; e.g. a "
                        "built variant whose offline report passed its gates)"}
    for verb, text in helps.items():
        p = sub.add_parser(verb, help=text)
        p.add_argument("name")
        if verb == "rollout":
            p.add_argument("variant")
        p.add_argument("-n", "--namespace")
        if verb == "get":
            p.add_argument("-w", "--watch", action="store_true",
                           help="print again every 2 s until interrupted")
    return parser


CLEAR = "\x1b[H\x1b[2J"


def watch(api: kube.Kube, namespace: str, name: str, every: float = 2.0,
          rounds: int | None = None) -> int:
    """Print the rollout again every ``every`` seconds (``rounds`` times; None: forever)."""
    shown = 0
    while rounds is None or shown < rounds:
        ms = api.get(API_VERSION, KIND, namespace, name)
        text = render(ms) if ms is not None else f"ModelService {namespace}/{name} not found"
        print(CLEAR + text, flush=True)
        shown += 1
        if rounds is None or shown < rounds:
            time.sleep(every)
    return 0


def main(argv: Sequence[str] | None = None, client: kube.Kube | None = None) -> int:
    args = build_parser().parse_args(argv)
    namespace = args.namespace or kube.current_namespace()
    try:
        api = client or kube.Kube(FIELD_MANAGER)
        if args.verb == "get":
            ms = api.get(API_VERSION, KIND, namespace, args.name)
            if ms is None:
                print(f"kubectl msv: ModelService {namespace}/{args.name} not found",
                      file=sys.stderr)
                return 1
            if args.watch:
                with contextlib.suppress(KeyboardInterrupt):
                    watch(api, namespace, args.name)
                return 0
            print(render(ms))
            return 0
        if api.get(API_VERSION, KIND, namespace, args.name) is None:
            print(f"kubectl msv: ModelService {namespace}/{args.name} not found",
                  file=sys.stderr)
            return 1
        if args.verb == "rollout":
            # the user's own spec change (the operator never writes spec)
            api.merge_patch(API_VERSION, KIND, namespace, args.name,
                            {"spec": {"rollout": {"candidate": args.variant}}})
            print(f"{SINGULAR}.{GROUP}/{args.name} patched (spec.rollout.candidate="
                  f"{args.variant})")
            return 0
        patch = steering_annotations(args.verb, datetime.now(UTC))
        api.annotate(API_VERSION, KIND, namespace, args.name, patch)
    except kube.ApiError as e:
        print(f"kubectl msv: {e}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k}={v}" if v is not None else f"{k}-" for k, v in patch.items())
    print(f"{SINGULAR}.{GROUP}/{args.name} annotated ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
