"""PURE: what the operator's watch caches keep of each object, and how.

``handlers``' kopf indexes store every watched object ``pack``-ed (compressed compact JSON
without the metadata a pass never reads, ``strip_live``; Pods trimmed to what the status
reads, ``trim_pod``; GPU nodes trimmed to their GPU labels and resources,
``pools.trim_node``, all under one key, ``GPU_NODES``); ``runtime`` ``unpack``-s the few a
pass reads. ``pod_summary`` is the fingerprint that decides whether a Pod event wakes its
ModelService.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Mapping
from typing import Any

from msv_operator import builders


def plain(obj: Any) -> Any:
    """A deep plain-dict/list copy of a kopf ``Body``/mapping (safe to keep and mutate).

    Keys and short strings are interned: the thousands of cached objects then share one copy
    of every field name and repeated value instead of one per decoded watch event."""
    if isinstance(obj, Mapping):
        return {sys.intern(str(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if type(obj) is str and len(obj) <= 64:
        return sys.intern(obj)
    return obj


def trim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a Pod that the status needs (keeps the watch cache small)."""
    meta = pod.get("metadata") or {}
    st = pod.get("status") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        return [{"name": c.get("name"), "ready": c.get("ready"), "state": plain(c.get("state")),
                 "lastState": plain(c.get("lastState")),
                 "restartCount": c.get("restartCount") or 0} for c in st.get(key) or ()]

    # creationTimestamp: where the pod's start-up phases begin (``startup``)
    trimmed_meta = {"name": meta.get("name"), "labels": plain(meta.get("labels") or {}),
                    "ownerReferences": plain(meta.get("ownerReferences") or []),
                    "creationTimestamp": meta.get("creationTimestamp")}
    mirror = (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION)
    if mirror is not None:
        trimmed_meta["annotations"] = {builders.MIRROR_ANNOTATION: mirror}
    if meta.get("deletionTimestamp"):
        trimmed_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    return {
        "metadata": trimmed_meta,
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": st.get("phase"),
            "conditions": [plain(c) for c in st.get("conditions") or ()
                           if c.get("type") in ("PodScheduled", "Ready")],
            "containerStatuses": containers("containerStatuses"),
            "initContainerStatuses": containers("initContainerStatuses"),
        },
    }


def pod_summary(pod: Mapping[str, Any]) -> str:
    """A compact fingerprint of what a pass reads from a Pod: its status, its serving label
    and its mirror annotation (a pod started from its template, or edited by hand, may need
    marking: ``apply.pods_to_mark``)."""
    trimmed = trim_pod(pod)
    meta = trimmed["metadata"]
    return json.dumps([trimmed["status"], meta["labels"].get(builders.LABEL_SERVING),
                       (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION)],
                      sort_keys=True, default=str)


GPU_NODES = "gpu-nodes"
"""The one key of the Node index: every GPU node (``pools.trim_node``) is a value of it."""

# Metadata a pass never reads: dropped from cached objects (smaller caches).
UNREAD_METADATA = ("managedFields", "resourceVersion", "creationTimestamp", "selfLink")


def pack(obj: Mapping[str, Any]) -> bytes:
    """A cached object as compressed compact JSON: a few hundred bytes instead of the ~10 KB
    of a decoded Deployment, for each of the 20,000 objects of 5,000 ModelServices. A pass
    unpacks the few it reads (a fresh copy each time, safe to mutate)."""
    return zlib.compress(json.dumps(obj, separators=(",", ":"), default=str).encode(), 1)


def unpack(data: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The object ``pack`` stored (a plain mapping is copied as it is)."""
    if isinstance(data, bytes):
        return dict(json.loads(zlib.decompress(data)))
    return dict(data)


def strip_live(obj: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """A plain copy of a watched object without the metadata a pass never reads."""
    meta = obj.get("metadata") or {}
    out = plain({**obj, "metadata": {k: v for k, v in meta.items() if k not in UNREAD_METADATA}})
    out.setdefault("apiVersion", api_version)
    out.setdefault("kind", kind)
    return out
