"""``kubectl msv``: a kubectl plugin (console script ``kubectl-msv``) to watch and steer rollouts.

* ``kubectl msv get NAME [-n NS] [-w]`` prints the rollout (steps, current weights, each gate's
  measured value against its threshold, the history) and the per-variant table (``-w``: again
  every 2 s, a live view, until Ctrl-C);
* ``kubectl msv pause|resume NAME`` sets/removes ``serving.modelservice.dev/rollout-paused``;
* ``kubectl msv promote|abort|retry NAME`` sets the one-shot
  ``serving.modelservice.dev/rollout-action: <verb>/<timestamp>`` (the operator handles it once
  and records it in ``status.rollout.handledAction``).

Only annotations are written, never the spec: Argo CD and Flux see no drift in what they own.
Uses the user's kubeconfig (``$KUBECONFIG``) through ``kube``. ``render`` is pure, so it is
tested on recorded objects.
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
from msv_operator.rollout import ANNOTATION_ACTION, ANNOTATION_PAUSED

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
             f"traffic {st.get('traffic', '-')}"]
    r = st.get("rollout")
    spec_rollout = (ms.get("spec") or {}).get("rollout")
    if not r:
        lines.append("Rollout: none" if not spec_rollout else
                     "Rollout: not started yet (the operator has not written status.rollout)")
    else:
        steps = [int(s) for s in r.get("steps") or ()]
        step = int(r.get("step") or 0)
        marked = " ".join(f"[{s}]" if i + 1 == step else str(s) for i, s in enumerate(steps))
        limit = ((spec_rollout or {}).get("analysis") or {}).get("failureLimit", 2)
        reason = f" ({r['reason']})" if r.get("reason") else ""
        lines += [
            f"Rollout: candidate {r.get('candidate')} from {r.get('stable')}",
            f"  phase:    {r.get('phase')}{reason}",
            f"  step:     {step}/{len(steps)}   steps (% to candidate): {marked}",
            f"  failures: {r.get('failures', 0)} (failureLimit {limit})",
            f"  started:  {r.get('startedAt', '-')}   step started: {r.get('stepStartedAt', '-')}",
            f"  message:  {r.get('message', '')}",
        ]
        if r.get("handledAction"):
            lines.append(f"  last action handled: {r['handledAction']}")
        last = r.get("lastAnalysis")
        if last:
            requests = (f", {last['requests']}/{last.get('minRequests')} candidate requests"
                        if "requests" in last else "")
            lines.append(f"Last analysis {last.get('time')} (step {last.get('step')}): "
                         f"{last.get('verdict')}{requests}")
            if last.get("message"):
                lines.append(f"  note: {last['message']}")
            gates = last.get("gates") or []
            if gates:
                lines += _table(
                    ["GATE", "VALUE", "THRESHOLD", "PASSED"],
                    [[g.get("name"), g.get("value"), f"{g.get('comparison')} {g.get('threshold')}",
                      {True: "yes", False: "NO", None: "no data"}[g.get("passed")]]
                     for g in gates])
        history = r.get("history") or []
        if history:
            lines.append("History:")
            lines += _table(["TIME", "PHASE", "STEP", "MESSAGE"],
                            [[h.get("time"), h.get("phase"), h.get("step"), h.get("message")]
                             for h in history])
    lines += _brownout_lines(ms)
    variants = st.get("variants") or []
    if variants:
        lines.append("Variants:")
        lines += _table(
            ["NAME", "WEIGHT", "READY/DESIRED", "HPA", "P95(ms)", "RPS", "ERRORS", "AGREEMENT",
             "PARAMS", "SIZE", "CPU(m)/POD", "MEM/POD", "OPTIMIZATION"],
            [[v.get("name"), v.get("weight"),
              f"{v.get('readyReplicas', 0)}/{v.get('desiredReplicas', v.get('replicas', 0))}",
              f"{v['minReplicas']}..{v['maxReplicas']}" if "maxReplicas" in v else None,
              v.get("p95Ms"),
              v.get("rps"), v.get("errorRate"), v.get("agreement"), v.get("parameters"),
              _size(v.get("sizeBytes")), v.get("cpuMillicores"), _size(v.get("memoryBytes")),
              v.get("optimization")] for v in variants])
    return "\n".join(lines)


def _brownout_lines(ms: Mapping[str, Any]) -> list[str]:
    """The brownout block (only when the spec asks for one) and a blind autoscaler."""
    lines: list[str] = []
    b = (ms.get("status") or {}).get("brownout")
    spec_b = ((ms.get("spec") or {}).get("autoscaling") or {}).get("brownout")
    if b:
        reason = f" ({b['reason']})" if b.get("reason") else ""
        lines += [
            f"Brownout: variant {b.get('variant')} for stable {b.get('stable')}",
            f"  phase:    {b.get('phase')}{reason} since {b.get('since', '-')}",
            f"  share:    {b.get('share', 0)}% (maxShare {b.get('maxShare', '-')})",
            f"  p95:      {b.get('p95Ms', '-')} ms (objective {b.get('objectiveMs')} ms, "
            f"release below {b.get('releaseBelowMs')} ms; measured {b.get('measuredAt', '-')})",
            f"  stable:   {b.get('stableReplicas', '-')}/{b.get('stableMaxReplicas', '-')} "
            "replicas (current/max)",
            f"  message:  {b.get('message', '')}",
        ]
    elif spec_b:
        lines.append("Brownout: not evaluated yet (the operator has not written status.brownout)")
    blind = _condition(ms, "AutoscalingBlind")
    if blind.get("status") == "True":
        lines.append(f"Autoscaling is blind ({blind.get('reason')}): {blind.get('message')}")
    return lines


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
             "retry": "start a rolled-back or aborted rollout again"}
    for verb, text in helps.items():
        p = sub.add_parser(verb, help=text)
        p.add_argument("name")
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
