"""PURE: what a pass has to write so the live objects match the desired ones.

* every desired object carries the annotation ``serving.modelservice.dev/applied-hash`` (a
  hash of the desired manifest, ``with_hash``); ``needs_apply`` is False only when the live
  object carries the same hash and still holds every desired field (``drift``: API-server
  defaults are ignored, resource quantities compare by value). ``repair_of`` says in words
  what re-applying restores when someone edited or deleted an object by hand;
* ``replicas_handover``: the apply that keeps a Deployment's replicas while an HPA takes
  them over;
* ``pods_to_mark``: the running pods whose serving label or mirror annotation differs from
  their variant's marks.

``reconcile`` sends these writes through ``kube`` (server-side apply, metadata patches).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from msv_contract.api import ANNOTATION_APPLIED_HASH
from msv_operator import builders, quantity
from msv_operator.owned import describe, key_of

HASH_ANNOTATION = ANNOTATION_APPLIED_HASH

# Kinds the operator creates whatever the cluster serves (ServiceMonitor and HTTPRoute only
# when their API is served, ``reconcile``): a desired one that is missing was deleted.
CORE_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"),
              ("autoscaling/v2", "HorizontalPodAutoscaler"))


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value is False or value == ""


def drift(live: Any, desired: Any, path: str = "") -> str | None:
    """The path of the first field of ``desired`` that ``live`` does not hold (None when it
    holds them all; API-server defaults are ignored; resource quantities compare by value, so
    ``1024Mi`` matches ``1Gi``)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return None if _empty(desired) and live is None else (path or ".")
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in live:
                if _empty(value):
                    continue
                return sub
            found = drift(live[key], value, sub)
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if live is None:
            return None if not desired else path
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for i, (lv, dv) in enumerate(zip(live, desired, strict=True)):
            found = drift(lv, dv, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if desired == live:
        return None
    if isinstance(desired, str | int | float) and isinstance(live, str | int | float):
        if str(desired) == str(live):
            return None
        dq, lq = quantity.parse(desired), quantity.parse(live)
        if dq is not None and lq is not None and abs(dq - lq) <= 1e-9 * max(1.0, abs(dq)):
            return None
    return path


def contains(live: Any, desired: Any) -> bool:
    """Whether ``live`` holds every field of ``desired`` (see ``drift``)."""
    return drift(live, desired) is None


def manifest_hash(obj: Mapping[str, Any]) -> str:
    """A stable hash of a desired manifest (without our hash annotation)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()[:20]


def with_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` annotated with its own hash."""
    digest = manifest_hash(obj)
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), HASH_ANNOTATION: digest}
    out["metadata"] = meta
    return out


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """False only when the live object was applied from the same manifest and still holds it."""
    if live is None:
        return True
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    wanted = ((desired.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
    if wanted is None or annotations.get(HASH_ANNOTATION) != wanted:
        return True
    return not contains(live, desired)


def repair_of(desired: Mapping[str, Any], live: Mapping[str, Any] | None,
              ms: Mapping[str, Any]) -> str | None:
    """What applying ``desired`` repairs, in words, or None when it is not a repair.

    Edited: the live object was applied from this very manifest (same hash) and lost a field.
    Deleted: a core object is missing although the operator already reported this generation
    (``status.observedGeneration``), so a previous pass had created it.
    """
    if live is not None:
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        wanted = ((desired.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
        path = drift(live, desired) if annotations.get(HASH_ANNOTATION) == wanted else None
        return None if path is None else \
            f"restored {describe(desired)}: {path} was changed by hand"
    generation = (ms.get("metadata") or {}).get("generation")
    observed = (ms.get("status") or {}).get("observedGeneration")
    core = (desired.get("apiVersion"), desired.get("kind")) in CORE_KINDS
    if core and generation is not None and observed == generation:
        return f"re-created {describe(desired)}: it was deleted"
    return None


def pods_to_mark(marks: Mapping[str, builders.PodMarks], pods: Iterable[Mapping[str, Any]]
                 ) -> list[tuple[str, dict[str, str], dict[str, str | None]]]:
    """(pod, label patch, annotation patch) for each pod whose serving label or mirror
    annotation differs from its variant's ``marks`` (pods of variants not in ``marks`` and
    pods being deleted are left alone; a None annotation value removes it)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        want = marks.get(str((meta.get("labels") or {}).get(builders.LABEL_VARIANT)))
        if want is None or meta.get("deletionTimestamp"):
            continue
        labels: dict[str, str] = {}
        annotations: dict[str, str | None] = {}
        if (meta.get("labels") or {}).get(builders.LABEL_SERVING) != want.serving:
            labels[builders.LABEL_SERVING] = want.serving
        if (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION) != want.mirror:
            annotations[builders.MIRROR_ANNOTATION] = want.mirror
        if labels or annotations:
            out.append((str(meta["name"]), labels, annotations))
    return sorted(out, key=lambda t: t[0])


def handover_manager(field_manager: str) -> str:
    """The field manager of the replicas handover (``replicas_handover``)."""
    return f"{field_manager}-handover"


def replicas_handover(desired: Mapping[str, Any], live: Mapping[tuple[str, str], Mapping[str, Any]]
                      ) -> dict[str, Any] | None:
    """The apply that keeps a Deployment's replica count when an HPA is about to own it.

    With server-side apply, a field the operator stops sending is removed when the operator
    was its only owner: switching a variant from fixed replicas to autoscaling would drop the
    running Deployment to 1 replica before the HPA acts. So, before the first apply without
    ``replicas`` (the HPA does not exist yet), a second field manager applies the live value,
    which then stays (owned by that manager) until the HPA controller scales it.
    """
    if desired.get("kind") != "Deployment" or "replicas" in (desired.get("spec") or {}):
        return None
    current = live.get(key_of(desired))
    replicas = ((current or {}).get("spec") or {}).get("replicas")
    name = (desired.get("metadata") or {}).get("name")
    if replicas is None or ("HorizontalPodAutoscaler", str(name)) in live \
            or ("ScaledObject", str(name)) in live:  # KEDA's HPA owns them
        return None
    meta = desired["metadata"]
    return {"apiVersion": desired["apiVersion"], "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": int(replicas)}}
