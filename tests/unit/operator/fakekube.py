"""The operator tests' in-memory Kubernetes API: one ``FakeKube`` standing in for
``msv_operator.kube.Kube`` (a subclass with the same method signatures, so it is accepted
wherever a ``Kube`` is).

What it holds (the tests put objects there; reads answer from it):

* ``objects`` - objects by (kind, namespace, name), answered by ``get``, ``metadata`` and
  ``list`` (label selectors ``k=v``, ``k!=v``, ``k``, ``!k``; namespace None: all);
* ``jobs`` / ``pods`` - Jobs and Pods by name (Jobs the operator applies land in ``jobs`` with
  a uid; ``finish`` gives one a terminal condition);
* ``logs`` - a container's log by container name; ``metrics`` - the PodMetrics answer;
* ``served_apis`` - the (apiVersion, plural) pairs discovery reports as served.

An apply answers ``{}``: the pass goes on with the live objects it was given.

What it records (the tests assert on it): ``applied`` (the last applied object by
``owned.key_of``), ``deleted`` ((kind, name)), ``status`` (the last status patch without its
None values) and ``statuses`` (every patch as sent), ``relabelled`` (pods' label patches),
``events`` (posted Event bodies), ``calls`` (every method called, in order, by name), and
the reads (``gets``, ``listed``, ``discoveries``, ``metric_reads``).

Variations are explicit: ``errors`` maps a method name to the exception it raises, and
``may_delete=False`` makes any delete fail the test. Any call the double does not implement
reaches ``_call`` and fails the test naming the request.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Mapping
from typing import Any

from msv_operator import kube
from msv_operator.owned import key_of

Key = tuple[str, str | None, str]
"""(kind, namespace, name)."""


def selected(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Whether ``obj``'s labels match an equality-based label selector."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            ok = labels.get(k) != v
        elif "=" in term:
            k, v = term.split("=", 1)
            ok = labels.get(k.rstrip("=")) == v
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), meta.get("namespace"), str(meta.get("name"))


class FakeKube(kube.Kube):
    """An in-memory ``Kube``: applies, deletes and status patches are recorded, reads are
    answered from what the test put in."""

    def __init__(self, *objects: Mapping[str, Any], may_delete: bool = True) -> None:
        # no ApiClient: every request the double does not answer fails in ``_call``
        self.field_manager = "msv-test"
        self.write_gate = None
        self.objects: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.metrics: builtins.list[dict[str, Any]] = []
        self.served_apis: set[tuple[str, str]] = set()
        self.errors: dict[str, BaseException] = {}
        self.may_delete = may_delete
        self.applied: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: builtins.list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}
        self.statuses: builtins.list[dict[str, Any]] = []
        self.relabelled: builtins.list[tuple[str, dict[str, str | None]]] = []
        self.events: builtins.list[dict[str, Any]] = []
        self.gets: builtins.list[Key] = []
        self.listed: builtins.list[str] = []
        self.discoveries: builtins.list[tuple[str, str]] = []
        self.metric_reads: builtins.list[tuple[str, str]] = []
        self.calls: builtins.list[str] = []
        self.closed = False
        self.put(*objects)

    # ---- the test's side ------------------------------------------------------------------
    def put(self, *objects: Mapping[str, Any]) -> None:
        """Objects the cluster holds (a Job or Pod by name, the rest by kind/namespace/name)."""
        for obj in objects:
            kind, _ns, name = key(obj)
            store: dict[Any, dict[str, Any]] = (
                self.jobs if kind == "Job" else self.pods if kind == "Pod" else self.objects)
            store[name if kind in ("Job", "Pod") else key(obj)] = dict(obj)

    def finish(self, name: str, kind: str = "Complete", **extra: Any) -> None:
        """The Job ``name`` ends: its ``kind`` condition (Complete, Failed) turns True."""
        self.jobs[name]["status"] = {"conditions": [{"type": kind, "status": "True", **extra}]}

    def _called(self, method: str) -> None:
        self.calls.append(method)
        error = self.errors.get(method)
        if error is not None:
            raise error

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "POST" and path.endswith("/events"):  # kube.post_event
            self._called("post_event")
            self.events.append(copy.deepcopy(kwargs.get("body") or {}))
            return {}
        raise AssertionError(f"the in-memory Kube does not answer {method} {path}")

    def close(self) -> None:
        self.closed = True

    # ---- writes ---------------------------------------------------------------------------
    def apply(self, obj: Mapping[str, Any], *, answer: bool = True,
              field_manager: str | None = None) -> dict[str, Any]:
        self._called("apply")
        applied = copy.deepcopy(dict(obj))
        self.applied[key_of(obj)] = applied
        if obj["kind"] == "Job":
            job = copy.deepcopy(applied)
            job["metadata"].setdefault("uid", f"uid-{job['metadata']['name']}")
            self.jobs[job["metadata"]["name"]] = job
        return {}  # no live answer: the pass goes on with the objects it observed

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               uid: str | None) -> None:
        self._called("delete")
        assert self.may_delete, f"nothing should be deleted: {kind} {namespace}/{name}"
        self.deleted.append((kind, name))
        if kind == "Job":
            self.jobs.pop(name, None)
        elif kind == "Pod":
            self.pods.pop(name, None)
        else:
            self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._called("patch_status")
        self.statuses.append(copy.deepcopy(dict(status)))
        self.status = {k: v for k, v in status.items() if v is not None}

    def patch_metadata(self, api_version: str, kind: str, namespace: str, name: str,
                       labels: Mapping[str, str | None] | None = None,
                       annotations: Mapping[str, str | None] | None = None) -> None:
        self._called("patch_metadata")
        if kind == "Pod" and labels:
            self.relabelled.append((name, dict(labels)))
        target = (self.pods.get(name) if kind == "Pod" else self.jobs.get(name)
                  if kind == "Job" else self.objects.get((kind, namespace, name)))
        if target is None:
            return
        meta = target.setdefault("metadata", {})
        for field, patch in (("labels", labels), ("annotations", annotations)):
            values = meta.setdefault(field, {})
            for k, v in (patch or {}).items():
                if v is None:
                    values.pop(k, None)
                else:
                    values[k] = v

    # ---- reads ----------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> dict[str, Any] | None:
        self._called("get")
        self.gets.append((kind, namespace, name))
        found = (self.jobs.get(name) if kind == "Job" else self.pods.get(name)
                 if kind == "Pod" else self.objects.get((kind, namespace, name)))
        return copy.deepcopy(found) if found is not None else None

    def metadata(self, api_version: str, kind: str, namespace: str | None, name: str
                 ) -> dict[str, Any] | None:
        self._called("metadata")
        found = self.objects.get((kind, namespace, name))
        return None if found is None else {"metadata": copy.deepcopy(found.get("metadata"))}

    def list(self, api_version: str, kind: str, namespace: str | None,
             label_selector: str | None = None) -> builtins.list[dict[str, Any]]:
        self._called("list")
        self.listed.append(kind)
        if kind in ("Job", "Pod"):
            pool = builtins.list((self.jobs if kind == "Job" else self.pods).values())
        else:
            pool = [o for (k, ns, _), o in self.objects.items()
                    if k == kind and (namespace is None or ns == namespace)]
        return [copy.deepcopy(o) for o in pool if selected(o, label_selector)]

    def pod_log(self, namespace: str, name: str, container: str, limit_bytes: int) -> str:
        self._called("pod_log")
        return self.logs.get(container, "")[-limit_bytes:]

    def pod_metrics(self, namespace: str, label_selector: str
                    ) -> builtins.list[dict[str, Any]]:
        self._called("pod_metrics")
        self.metric_reads.append((namespace, label_selector))
        return self.metrics

    def served(self, api_version: str, plural: str) -> bool:
        self._called("served")
        self.discoveries.append((api_version, plural))
        return (api_version, plural) in self.served_apis
