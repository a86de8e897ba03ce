"""PURE: where a variant's start-up went (``status.variants[].startup``), from its pods.

A pod's own timestamps, as the API server keeps them (to the whole second), give the phases:

* ``scheduledSeconds``: created (``metadata.creationTimestamp``) -> ``PodScheduled`` True;
* ``imageSeconds``: scheduled -> the first container started (the pull init container, else
  the server), plus pull finished -> server started: the sandbox, volumes, image pulls and
  container creation. The kubelet reports no image-pull timing in the pod status (only in its
  ``Pulled`` Events), so the pull of an image is inside this phase, not apart from it;
* ``fetchSeconds``: the model pull (the ``model-pull`` init container): its own report when
  its termination message carries one (msv_contract.env.PULL_*, to the millisecond, with
  ``fetchedBytes`` and ``cacheHit``), else its ``startedAt`` -> ``finishedAt``; absent for a
  model on a volume (``pvc://``, ``file://``);
* ``loadSeconds``: server started -> ``Ready`` True: process start, imports, the model's load
  and the startup probe that saw it (builders.STARTUP_PROBE_PERIOD_SECONDS); the server's
  own split of it is its ``model_server_startup_phase_seconds``;
* ``totalSeconds``: created -> Ready (the phases add up to it, but for the fetch report's
  rounding).

``latest`` picks the pod a variant's entry describes: the newest Ready pod, kept once chosen
(a later readiness blip of the same pod does not rewrite it) and never replaced by an older
one (a scale-down that removes the newest pod keeps the entry). ``started_events`` gives the
Event of a variant whose first pod became Ready.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from msv_contract import env as contract

PHASES = ("scheduledSeconds", "imageSeconds", "fetchSeconds", "loadSeconds")
"""The phase keys in order (``totalSeconds`` is their whole)."""
EVENT_REASON = "VariantStarted"
CACHE_BYPASSED_REASON = "ModelCacheBypassed"
"""Warning: a pod's pull could not use the node's model cache (disk full, agent down, ...)."""
"""The Normal Event when a variant's first pod becomes Ready."""


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _since(pod: Mapping[str, Any], type_: str) -> Any:
    """When the condition ``type_`` turned True (as written), or None while it is not."""
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_ and c.get("status") == "True":
            return c.get("lastTransitionTime")
    return None


def _condition_time(pod: Mapping[str, Any], type_: str) -> datetime | None:
    return _time(_since(pod, type_))


def _container(pod: Mapping[str, Any], key: str, name: str) -> Mapping[str, Any]:
    for cs in (pod.get("status") or {}).get(key) or ():
        if cs.get("name") == name:
            return dict(cs)
    return {}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def pull_report(message: Any) -> dict[str, Any] | None:
    """The pull's report in its termination message (msv_contract.env.PULL_*), or None."""
    if not isinstance(message, str) or not message.startswith("{"):
        return None
    try:
        report = json.loads(message)
    except ValueError:
        return None
    seconds = report.get(contract.PULL_SECONDS) if isinstance(report, dict) else None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    return report


def phases(pod: Mapping[str, Any], *, server: str, pull: str) -> dict[str, Any] | None:
    """The start-up of a Ready ``pod`` (``server``: the model server's container name,
    ``pull``: the pull init container's); None when it is not Ready or lacks a timestamp."""
    meta = pod.get("metadata") or {}
    created = _time(meta.get("creationTimestamp"))
    scheduled = _condition_time(pod, "PodScheduled")
    ready = _condition_time(pod, "Ready")
    server_cs = _container(pod, "containerStatuses", server)
    started = _time(((server_cs.get("state") or {}).get("running") or {}).get("startedAt"))
    if created is None or scheduled is None or ready is None or started is None:
        return None
    done = (_container(pod, "initContainerStatuses", pull).get("state") or {}).get("terminated")
    out: dict[str, Any] = {"pod": meta.get("name")}
    first = started
    fetch: float | None = None
    gap = 0.0
    if done and done.get("exitCode") == 0:
        pull_start, pull_end = _time(done.get("startedAt")), _time(done.get("finishedAt"))
        if pull_start is not None and pull_end is not None:
            first = pull_start
            fetch = _seconds(pull_start, pull_end)
            gap = _seconds(pull_end, started) or 0.0
        report = pull_report(done.get("message"))
        if report is not None:
            fetch = round(float(report[contract.PULL_SECONDS]), 3)
            if isinstance(report.get(contract.PULL_BYTES), int):
                out["fetchedBytes"] = report[contract.PULL_BYTES]
            if isinstance(report.get(contract.PULL_CACHE_HIT), bool):
                out["cacheHit"] = report[contract.PULL_CACHE_HIT]
            if report.get(contract.PULL_CACHE_BYPASS):
                out["cacheBypass"] = str(report[contract.PULL_CACHE_BYPASS])[:300]
    out["scheduledSeconds"] = _seconds(created, scheduled)
    out["imageSeconds"] = (_seconds(scheduled, first) or 0.0) + gap
    if fetch is not None:
        out["fetchSeconds"] = fetch
    out["loadSeconds"] = _seconds(started, ready)
    out["totalSeconds"] = _seconds(created, ready)
    restarts = server_cs.get("restartCount")
    if isinstance(restarts, int) and restarts > 0:
        out["restarts"] = restarts
    out["createdAt"] = meta.get("creationTimestamp")
    out["readyAt"] = _since(pod, "Ready")
    return {k: (_number(v) if isinstance(v, float) else v) for k, v in out.items()}


def _number(value: float) -> int | float:
    """Whole seconds as integers (what the pod's timestamps give), else milliseconds."""
    return int(value) if value == int(value) else round(value, 3)


def latest(pods: Sequence[Mapping[str, Any]], prior: Mapping[str, Any] | None, *,
           server: str, pull: str) -> dict[str, Any] | None:
    """The entry for the newest Ready pod of ``pods`` (one variant's), or ``prior`` as it was
    when that is the same pod, an older one, or there is none."""
    best: tuple[datetime, str, Mapping[str, Any]] | None = None
    for pod in pods:
        meta = pod.get("metadata") or {}
        created = _time(meta.get("creationTimestamp"))
        if meta.get("deletionTimestamp") or created is None or \
                _condition_time(pod, "Ready") is None:
            continue
        key = (created, str(meta.get("name") or ""), pod)
        if best is None or key[:2] > best[:2]:
            best = key
    prior = dict(prior) if isinstance(prior, Mapping) else None
    if best is None:
        return prior
    if prior is not None:
        if prior.get("pod") == best[1]:
            return prior
        since = _time(prior.get("createdAt"))
        if since is not None and best[0] <= since:
            return prior
    found = phases(best[2], server=server, pull=pull)
    return found if found is not None else prior


def message(startup: Mapping[str, Any]) -> str:
    """``started in 4 s: scheduled 0 s, image 1 s, fetch 0.31 s (12.3 MB), load 3 s (pod
    x)``."""
    def s(v: Any) -> str:
        return f"{v} s"

    names = {"scheduledSeconds": "scheduled", "imageSeconds": "image",
             "fetchSeconds": "fetch", "loadSeconds": "load"}
    parts = []
    for key in PHASES:
        if key not in startup:
            continue
        part = f"{names[key]} {s(startup[key])}"
        if key == "fetchSeconds":
            if startup.get("cacheHit"):
                part += " (cache hit)"
            elif isinstance(startup.get("fetchedBytes"), int):
                part += f" ({startup['fetchedBytes'] / 1e6:.1f} MB)"
        parts.append(part)
    text = f"started in {s(startup.get('totalSeconds'))}: {', '.join(parts)}"
    if startup.get("restarts"):
        text += f", after {startup['restarts']} restart(s)"
    return f"{text} (pod {startup.get('pod')})"


def started_events(prior: Sequence[Mapping[str, Any]] | None,
                   current: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, str, str]]:
    """(type, reason, message) of each variant whose entry has a ``startup`` now and had none
    before (its first pod became Ready), and a Warning for each newly recorded pod whose pull
    could not use the node's model cache (``cacheBypass``: it pulled from the store)."""
    before = {v.get("name"): v.get("startup") for v in prior or () if isinstance(v, Mapping)}
    out = []
    for v in current or ():
        if not (isinstance(v, Mapping) and isinstance(v.get("startup"), Mapping)):
            continue
        now, was = v["startup"], before.get(v.get("name"))
        if not was:
            out.append(("Normal", EVENT_REASON, f"variant {v.get('name')} {message(now)}"))
        if now.get("cacheBypass") and (not isinstance(was, Mapping)
                                       or was.get("pod") != now.get("pod")):
            out.append(("Warning", CACHE_BYPASSED_REASON,
                        f"variant {v.get('name')}: pod {now.get('pod')} pulled its model "
                        f"without the node's model cache: {now['cacheBypass']} "
                        f"(docs/model-cache.md)"))
    return out
