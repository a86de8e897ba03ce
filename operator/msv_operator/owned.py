"""PURE: which live objects belong to a ModelService, and how they are named.

An owned object carries the ModelService label and a controller ownerReference to the
ModelService's uid; inside one namespace it is keyed by (kind, name). Called by ``reconcile``
(what may be pruned, the Deployments and HPAs of each variant) and ``apply`` (names in
messages).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from msv_contract.api import KIND
from msv_operator import brownout, builders


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) identifying an owned object inside one namespace."""
    return str(obj.get("kind")), str((obj.get("metadata") or {}).get("name"))


def describe(obj: Mapping[str, Any]) -> str:
    kind, name = key_of(obj)
    return f"{kind} {name}"


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` has a controller ownerReference to the ModelService ``uid``."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("uid") == uid and ref.get("controller") and ref.get("kind") == KIND:
            return True
    return False


def owned_by_name(pod: Mapping[str, Any], name: str) -> bool:
    """Whether ``pod`` carries the label of the ModelService ``name``."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(
        builders.LABEL_MODELSERVICE) == name


def by_variant(objects: Iterable[Mapping[str, Any]], uid: str, kind: str
               ) -> dict[str, Mapping[str, Any]]:
    """The owned objects of ``kind``, by variant."""
    out: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        if obj.get("kind") != kind or not owned_by(obj, uid):
            continue
        variant = ((obj.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_VARIANT)
        if variant:
            out[str(variant)] = obj
    return out


def deployments_by_variant(objects: Iterable[Mapping[str, Any]], uid: str
                           ) -> dict[str, Mapping[str, Any]]:
    return by_variant(objects, uid, "Deployment")


def hpas_by_variant(objects: Iterable[Mapping[str, Any]], uid: str
                    ) -> dict[str, brownout.HpaState]:
    """What each owned HPA says, by variant; for a variant KEDA scales, the HPA KEDA made
    from its ScaledObject (it carries the ScaledObject's labels and is owned by it)."""
    objects = list(objects)
    scaled = {str((o.get("metadata") or {}).get("uid")) for o in objects
              if o.get("kind") == "ScaledObject" and owned_by(o, uid)}
    out: dict[str, brownout.HpaState] = {}
    for o in objects:
        if o.get("kind") != "HorizontalPodAutoscaler":
            continue
        meta = o.get("metadata") or {}
        by_keda = any(ref.get("kind") == "ScaledObject" and ref.get("uid") in scaled
                      for ref in meta.get("ownerReferences") or ())
        variant = (meta.get("labels") or {}).get(builders.LABEL_VARIANT)
        if variant and by_keda:
            out[str(variant)] = brownout.hpa_state(o)
    out.update({v: brownout.hpa_state(o)
                for v, o in by_variant(objects, uid, "HorizontalPodAutoscaler").items()})
    return out
