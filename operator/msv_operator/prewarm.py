"""Pre-warming the node-local model cache (``spec.model.prewarm``; docs/model-cache.md,
"Pre-warming"): one Job per eligible node pulls spec.model's artifact through that node's
cache agent, so the first model pod on the node finds it cached.

* **When.** ``spec.model.prewarm`` and the operator has a model cache URL; spec.model is an
  artifact the agents cache (``modelcache.not_cached``) and a variant serves it. Otherwise
  ``ignored`` says why, for ``FieldsIgnored``, and nothing is created.
* **Which nodes** (``eligible_nodes``, pure): the union over the variants that serve
  spec.model (not one with a model of its own or a build, not one withheld this pass) of the
  nodes their pods may run on: Ready, not cordoned, every ``NoSchedule``/``NoExecute`` taint
  tolerated by the pods' tolerations (``builders.tolerations``) and, for a GPU variant, holding
  at least ``count`` of its placement's resource (GPU fit's choice, else spec.gpu as written)
  and, when the placement names products, one of them. The first ``MAX_NODES`` by name get a
  Job; the status says when the list was cut.
* **The Job** (``build_job``): ``<ms>-prewarm-<hash>`` (``job_name``), pinned to the node by
  required node affinity on its ``kubernetes.io/hostname`` label, the pods' tolerations, Pod
  Security ``restricted``; its one container is the variants' pull init container
  (``builders.model_volume``: same image, credentials, ``--sha256`` and ``--cache``) writing
  into an emptyDir. Owned by the ModelService, removed ``TTL_SECONDS`` after it ends.
* **What changes.** A new artifact (URI or sha256) or node gives new Job names. A running Job
  that is no longer wanted (another artifact, a node no longer eligible, prewarm turned off)
  is deleted; finished ones are left to their TTL. One that succeeded is not made again once
  its TTL removed it (``PrewarmState.warmed``; after a restart once more, a cache hit); a
  failed one is, on the first pass after its TTL.
* **Status and Events.** ``summarize`` (pure) turns the Jobs into ``status.modelCache.prewarm``;
  a Warning ``ModelCachePrewarmFailed`` names the node and the reason of each failed or
  refused Job (once per Job in this process), a Normal ``ModelCachePrewarmed`` marks the pass
  where every Job has succeeded. Pre-warming is best effort: it never changes ``Ready``,
  ``Progressing`` or ``Degraded``.

Nodes are LISTed (all of them, trimmed to what the rule reads, ``trim_node``) at most every
``NODES_SECONDS`` per operator process, and only for a ModelService that pre-warms.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msv_contract import api, modelcache
from msv_operator import builders, optimize, pools, spec
from msv_operator import kube as kubeapi
from msv_operator.owned import owned_by

log = logging.getLogger("msv_operator.prewarm")

JOB_API = optimize.JOB_API
LABEL_PREWARM = api.LABEL_PREWARM
ANNOTATION_NODE = api.ANNOTATION_PREWARM_NODE
HOSTNAME_LABEL = "kubernetes.io/hostname"
MAX_NODES = 20
"""Most prewarm Jobs (nodes) per ModelService and artifact."""
PENDING_SHOWN = 10
"""Most node names in ``status.modelCache.prewarm.pending``."""
TTL_SECONDS = 600
BACKOFF_LIMIT = 2
DEADLINE_SECONDS = 1800
NODES_SECONDS = 30.0
"""How long a LIST of the Nodes is reused."""
POLL_SECONDS = 15.0
"""While a Job runs, the ModelService is looked at again this often (Jobs are not watched)."""
UNAVAILABLE = "ModelCachePrewarmUnavailable"
"""The ``FieldsIgnored`` reason naming ``spec.model.prewarm``."""
PREWARMED = "ModelCachePrewarmed"
PREWARM_FAILED = "ModelCachePrewarmFailed"
FIELD = "spec.model.prewarm"


# ---- nodes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """What the eligibility rule reads of a Node."""

    name: str
    hostname: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    allocatable: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    unschedulable: bool = False


def trim_node(node: Mapping[str, Any]) -> Node:
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    name = str(meta.get("name") or "")
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ())
    return Node(name=name, hostname=labels.get(HOSTNAME_LABEL) or name, labels=labels,
                taints=tuple(dict(t) for t in (node.get("spec") or {}).get("taints") or ()),
                allocatable={str(k): str(v) for k, v in (
                    status.get("allocatable") or status.get("capacity") or {}).items()},
                ready=ready, unschedulable=bool((node.get("spec") or {}).get("unschedulable")))


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' rule: a toleration matches a taint when its effect is empty or the same and
    either its operator is ``Exists`` (with no key: every taint) or its key and value equal
    the taint's (``Equal``, the default)."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
                taint.get("value") or ""):
            return True
    return False


BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def admits(node: Node, tolerations: Sequence[Mapping[str, Any]],
           target: pools.Target | None) -> bool:
    """Whether a pod with ``tolerations`` requesting ``target`` (None: no GPU) may run on
    ``node``."""
    if not node.ready or node.unschedulable:
        return False
    if any(t.get("effect") in BLOCKING_EFFECTS and not tolerates(tolerations, t)
           for t in node.taints):
        return False
    if target is None:
        return True
    try:
        held = int(str(node.allocatable.get(target.resource) or 0))
    except ValueError:
        return False
    if held < target.count:
        return False
    return not target.products or node.labels.get(pools.PRODUCT_LABEL) in target.products


def serving_variants(parsed: spec.ModelServiceSpec, withheld: Collection[str] = ()
                     ) -> list[spec.Variant]:
    """The variants whose pods pull spec.model: no model of their own, no build, not
    withheld this pass."""
    return [v for v in parsed.variants
            if v.model is None and v.build is None and v.name not in withheld]


def eligible_nodes(parsed: spec.ModelServiceSpec, nodes: Sequence[Node],
                   targets: Mapping[str, pools.Target | None],
                   withheld: Collection[str] = ()) -> list[Node]:
    """The nodes where a pod of a variant that serves spec.model may run (see the module's
    docstring), by name. ``targets``: each GPU variant's placement (a variant missing from it
    runs without a GPU when the spec has no spec.gpu, else with spec.gpu as written)."""
    tolerations = builders.tolerations(parsed)
    wanted = [targets.get(v.name, builders.spec_target(parsed))
              for v in serving_variants(parsed, withheld)]
    return sorted((n for n in nodes if any(admits(n, tolerations, t) for t in wanted)),
                  key=lambda n: n.name)


# ---- what is warmed, and why not ------------------------------------------------------------

def artifact_of(src: spec.ModelSource) -> str:
    """``status.modelCache.prewarm.artifact``: the sha256 when the spec pins one, else the URI."""
    return src.sha256 or src.uri


def artifact_label(src: spec.ModelSource) -> str:
    """``LABEL_PREWARM``'s value: a short hash of the URI and sha256."""
    return hashlib.sha256(f"{src.uri}\n{src.sha256 or ''}".encode()).hexdigest()[:16]


def ignored(parsed: spec.ModelServiceSpec, opts: builders.BuildOptions
            ) -> list[tuple[str, str]]:
    """(``UNAVAILABLE``, message) when spec.model.prewarm is set but cannot act."""
    if not parsed.prewarm:
        return []
    if not opts.model_cache_url:
        why = ("the node-local model cache is not enabled (chart value modelCache.enabled), so "
               "there is no cache to fill")
    elif (reason := modelcache.not_cached(parsed.model.uri)) is not None:
        why = f"spec.model.uri: {reason}"
    elif not any(v.model is None and v.build is None for v in parsed.variants):
        why = ("no variant serves spec.model (each has a model of its own or a build), so "
               "nothing pulls it")
    else:
        return []
    return [(UNAVAILABLE, f"{FIELD}: {why}; nothing is pre-warmed")]


# ---- the Job --------------------------------------------------------------------------------

def job_name(ms_name: str, node: str, src: spec.ModelSource) -> str:
    """``<ms>-prewarm-<10 hex of sha256(node, URI, sha256)>``, at most 63 characters (a long
    ModelService name is cut, with a hash of it)."""
    digest = hashlib.sha256(f"{node}\n{src.uri}\n{src.sha256 or ''}".encode()).hexdigest()
    suffix = f"-prewarm-{digest[:10]}"
    base = ms_name
    if len(base) + len(suffix) > 63:
        cut = hashlib.sha256(base.encode()).hexdigest()[:6]
        base = f"{base[:63 - len(suffix) - 7].rstrip('-')}-{cut}"
    return base + suffix


def build_job(ms: Mapping[str, Any], parsed: spec.ModelServiceSpec, node: Node,
              opts: builders.BuildOptions) -> dict[str, Any]:
    """The Job that warms ``node``'s cache with spec.model (see the module's docstring).
    Raises builders.NoServingImage when no image serves the spec."""
    src = parsed.model
    volumes, _mount, init = builders.model_volume(parsed, src, opts)
    assert len(init) == 1, "a cached source has exactly one pull container"
    container = dict(init[0])
    label = artifact_label(src)
    managed = builders.labels(parsed.name)["app.kubernetes.io/managed-by"]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": builders.pod_security(),
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [node.hostname]}]}]}}},
    }
    if builders.tolerations(parsed):
        pod["tolerations"] = builders.tolerations(parsed)
    return {
        "apiVersion": JOB_API, "kind": "Job",
        "metadata": {"name": job_name(parsed.name, node.name, src),
                     "namespace": parsed.namespace,
                     "labels": {**builders.labels(parsed.name), LABEL_PREWARM: label},
                     "annotations": {ANNOTATION_NODE: node.name},
                     "ownerReferences": [builders.owner_reference(ms)]},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            # no ModelService label on the pod: it is no server of the ModelService
            "template": {"metadata": {"labels": {LABEL_PREWARM: label,
                                                 "app.kubernetes.io/managed-by": managed}},
                         "spec": pod},
        },
    }


# ---- the status -----------------------------------------------------------------------------

def job_phase(job: Mapping[str, Any] | None) -> str:
    """``Succeeded``, ``Failed`` or ``Pending`` (not created yet, or running)."""
    for c in ((job or {}).get("status") or {}).get("conditions") or ():
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return "Succeeded" if c["type"] == "Complete" else "Failed"
    return "Pending"


def failure_reason(job: Mapping[str, Any]) -> str:
    """Why a failed Job failed, in the Job controller's words."""
    for c in (job.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Failed" and c.get("status") == "True":
            why = {"DeadlineExceeded": f"it ran past its deadline ({DEADLINE_SECONDS} s)",
                   "BackoffLimitExceeded": f"its pod failed {BACKOFF_LIMIT + 1} times"}.get(
                str(c.get("reason")), str(c.get("reason") or "failed"))
            return why + (f" ({c['message']})" if c.get("message") else "")
    return "failed"


def summarize(artifact: str, eligible: int, jobs: Mapping[str, Mapping[str, Any] | None],
              warmed: Collection[str] = ()) -> dict[str, Any]:
    """``status.modelCache.prewarm`` from each warmed node's Job (None: none, and the node is
    in ``warmed`` when its Job succeeded and is gone, else not created yet): ``artifact``,
    ``nodes`` (eligible), ``succeeded``, ``failed``, ``pending`` (the first ``PENDING_SHOWN``
    node names) and, when there were more eligible nodes than Jobs, ``limitedTo``."""
    phases = {node: "Succeeded" if job is None and node in warmed else job_phase(job)
              for node, job in jobs.items()}
    out: dict[str, Any] = {
        "artifact": artifact, "nodes": eligible,
        "succeeded": sum(1 for p in phases.values() if p == "Succeeded"),
        "failed": sum(1 for p in phases.values() if p == "Failed"),
        "pending": sorted(n for n, p in phases.items() if p == "Pending")[:PENDING_SHOWN],
    }
    if eligible > len(jobs):
        out["limitedTo"] = len(jobs)
    return out


def complete(st: Mapping[str, Any] | None) -> bool:
    """Every Job of a status ``summarize`` wrote has succeeded (and there was one)."""
    if not isinstance(st, Mapping):
        return False
    warmed = min(int(st.get("nodes") or 0), int(st.get("limitedTo") or MAX_NODES))
    return warmed > 0 and st.get("succeeded") == warmed


# ---- the pass -------------------------------------------------------------------------------

@dataclass
class PrewarmState:
    """Pre-warming's state in one operator process: the Nodes as last listed and the failed
    Jobs already reported."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    nodes: list[Node] | None = None
    stamp: float = 0.0
    reported: set[str | tuple[str, str]] = field(default_factory=set)
    """Uids of failed Jobs, and (ModelService uid, name) of refused ones, whose Event was
    posted."""
    warmed: set[tuple[str, str]] = field(default_factory=set)
    """(ModelService uid, Job name) of Jobs seen succeeded: not made again once their TTL removed
    them (a failed one is: the next pass after its TTL tries again)."""


@dataclass
class Prewarm:
    """What pre-warming says in one pass."""

    status: dict[str, Any] | None = None
    """``status.modelCache.prewarm`` (None: not pre-warming)."""
    ignored: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def list_nodes(kube: Any, state: PrewarmState) -> list[Node]:
    """Every Node, trimmed (a LIST reused for ``NODES_SECONDS``). Raises kube.ApiError."""
    with state.lock:
        if state.nodes is not None and time.monotonic() - state.stamp < NODES_SECONDS:
            return state.nodes
    found = [trim_node(n) for n in kube.list("v1", "Node", None)]
    with state.lock:
        state.nodes, state.stamp = found, time.monotonic()
    return found


def resolve(kube: Any, state: PrewarmState, ms: Mapping[str, Any],
            parsed: spec.ModelServiceSpec, opts: builders.BuildOptions,
            targets: Mapping[str, pools.Target | None], withheld: Collection[str] = ()
            ) -> Prewarm:
    """Creates the wanted Jobs, deletes running ones no longer wanted, and says what the
    status and the Events say (see the module's docstring). Raises kube.Transient/Conflict
    for the caller to retry."""
    out = Prewarm(ignored=ignored(parsed, opts))
    prior = ((ms.get("status") or {}).get("modelCache") or {}).get("prewarm")
    active = parsed.prewarm and not out.ignored
    if not active and not prior:
        return out  # nothing to create or clean up: no LIST
    jobs = {str((j.get("metadata") or {}).get("name")): j for j in kube.list(
        JOB_API, "Job", parsed.namespace,
        f"{api.LABEL_MODELSERVICE}={parsed.name},{LABEL_PREWARM}")}
    wanted: dict[str, Node] = {}
    eligible: list[Node] = []
    if active:
        try:
            eligible = eligible_nodes(parsed, list_nodes(kube, state), targets, withheld)
        except (kubeapi.Rejected, kubeapi.NotFound) as e:
            out.ignored.append((UNAVAILABLE, f"{FIELD}: the operator cannot list the Nodes "
                                             f"({e}); nothing is pre-warmed"))
            active = False
        wanted = {job_name(parsed.name, n.name, parsed.model): n
                  for n in eligible[:MAX_NODES]}
    uid = str((ms.get("metadata") or {}).get("uid") or "")
    for name, job in sorted(jobs.items()):  # ours, running, and no longer wanted
        if name not in wanted and job_phase(job) == "Pending" and owned_by(job, uid):
            kube.delete(JOB_API, "Job", parsed.namespace, name,
                        (job.get("metadata") or {}).get("uid"))
            log.info("Deleted prewarm Job %s: no longer wanted", name,
                     extra={"namespace": parsed.namespace, "modelservice": parsed.name})
    if not active:
        return out
    per_node: dict[str, Mapping[str, Any] | None] = {}
    warmed: set[str] = set()
    for name, node in wanted.items():
        job = jobs.get(name)
        per_node[node.name] = job
        done = (uid, name)
        if job is not None and job_phase(job) == "Succeeded":
            with state.lock:
                state.warmed.add(done)
        elif job is None and done in state.warmed:
            warmed.add(node.name)
        elif job is None:
            try:
                kube.apply(build_job(ms, parsed, node, opts), answer=False)
                log.info("Created prewarm Job %s for node %s", name, node.name,
                         extra={"namespace": parsed.namespace, "modelservice": parsed.name})
            except kubeapi.Rejected as e:
                log.warning("Could not create prewarm Job %s: %s", name, e,
                            extra={"namespace": parsed.namespace, "modelservice": parsed.name})
                with state.lock:
                    first = (uid, name) not in state.reported
                    state.reported.add((uid, name))
                if first:
                    out.events.append(("Warning", PREWARM_FAILED,
                                       f"node {node.name}: Job {name} was refused: {e}"))
        elif job_phase(job) == "Failed":
            _report_failure(kube, state, parsed, node.name, name, job, out)
    out.status = summarize(artifact_of(parsed.model), len(eligible), per_node, warmed)
    if len(per_node) > out.status["succeeded"] + out.status["failed"]:
        out.requeue_after = POLL_SECONDS
    if complete(out.status) and not (complete(prior) and isinstance(prior, Mapping)
                                     and prior.get("artifact") == out.status["artifact"]):
        out.events.append(("Normal", PREWARMED, (
            f"spec.model ({artifact_of(parsed.model)}) is cached on "
            f"{out.status['succeeded']} node(s)")))
    return out


def _report_failure(kube: Any, state: PrewarmState, parsed: spec.ModelServiceSpec, node: str,
                    name: str, job: Mapping[str, Any], out: Prewarm) -> None:
    """A Warning Event naming the node and the reason, once per failed Job."""
    uid = str((job.get("metadata") or {}).get("uid") or name)
    with state.lock:
        if uid in state.reported:
            return
        state.reported.add(uid)
    why = failure_reason(job)
    pods = kube.list("v1", "Pod", parsed.namespace, f"{optimize.JOB_NAME_SELECTOR}={name}")
    pods.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    ended = optimize.termination_text(pods[-1]) if pods else ""
    out.events.append(("Warning", PREWARM_FAILED,
                       f"node {node}: Job {name} failed: {why}" + (f"; {ended}" if ended else "")))
