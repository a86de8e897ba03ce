"""The optimization pipeline in a reconcile pass: per variant with ``build``, the artifact key,
whether its artifact is published, the Job that produces it, and what the status says.

A variant's artifact is content-addressed (``msv_contract.pipeline``): the key hashes the
source model's sha256, the canonical recipe (``recipe_of``: exactly the fields that change
what is produced) and the data's sha256. Per pass, per built variant:

* **Published.** ``<output>/<key>/MANIFEST`` is read in the background (``placement.HeaderReads``
  on a cache of its own; a MANIFEST is immutable, a missing one is asked again after
  ``placement.ABSENT_TTL``). Found and well-formed (its key, a sha256): the variant serves
  ``<output>/<key>/model.tar.gz`` with that sha256 (the pull checks it), no Job is made, and
  report.json is read the same way for the offline report. A status that already records
  the key at this output (``provenance``) serves it without a read (it was verified when
  recorded).
* **Building.** No MANIFEST: the Job ``<ms>-<variant>-build-<key[:10]>`` (``build_job``) is
  created unless it exists; while it runs the newest progress line of its pod's log
  (``PROGRESS_PREFIX``) is read on the measurement interval into ``status.variants[].build``.
  The variant serves its previous artifact meanwhile (the status's record of another key),
  else it has no Deployment yet: nothing is served from an unfinished artifact. A running Job
  of another key of the same variant (the recipe changed) is deleted.
* **Succeeded.** The Job's termination message (``RESULT_KEYS``) must name the key and the
  sha256 the MANIFEST then says; the cached "missing" answer is dropped so the next read
  finds it.
* **A store the operator does not read.** A ``pvc://`` output (``reads_output``: the claim is
  mounted into the Job only, read-write at ``OUTPUT_DIR``) is never read here, and an S3
  MANIFEST that cannot be read (``NotChecked``) is treated alike: the Job decides. It finds a
  published key and ends at once without work, or builds; its result (key, sha256, size, the
  report's summary) is the record, kept in the status, so the same recipe never runs a Job
  again while the status holds it. The variant's pods check that sha256 when they pull
  (a ``pvc://`` archive is pulled from the claim, ``builders._model_volume``). A Job that
  succeeds without a result is a failure (nothing says what it published).
* **Failed.** ``Built=False``, reason ``BuildFailed``: the Job's own reason (deadline, back-off),
  the container's termination message and the last ``LOG_LINES`` lines of its log (read once
  per Job). The variant keeps what it served. A new generation of the ModelService deletes
  the failed Job, so the next pass tries again.

Nothing here writes spec; ``gates`` on the offline report say ``readyToRollOut`` in the
status, and ``kubectl msv rollout`` starts the rollout (docs/optimization.md says why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlparse

from msv_contract import api, env, pipeline
from msv_contract.api import LABEL_MODELSERVICE
from msv_operator import artifacts, builders, placement, spec, status
from msv_operator import kube as kubeapi

log = logging.getLogger("msv_operator.optimize")

JOB_API = "batch/v1"
SOURCE_DIR = "/mnt/source"
DATA_DIR = "/mnt/data"
OUTPUT_DIR = "/mnt/output"
"""A ``pvc://`` output's claim, mounted read-write in the build container (the Job publishes
to ``file://<OUTPUT_DIR>/<prefix>/``)."""
OUTPUT_VOLUME = "output"
WORK_DIR = "/tmp/work"
BUILD_CONTAINER = "optimize"
SOURCE_PULL = "source-pull"
DATA_PULL = "data-pull"
LABEL_BUILD = api.LABEL_BUILD
LABEL_KEY = api.LABEL_BUILD_KEY
ANNOTATION_GENERATION = api.ANNOTATION_BUILD_GENERATION
"""A failed Job is retried by a newer generation than this."""
JOB_NAME_SELECTOR = "batch.kubernetes.io/job-name"
BACKOFF_LIMIT = 0
"""A failed build is reported, not retried by the Job controller (its cause rarely passes)."""
TTL_SECONDS = 86400
"""A finished Job (and its pod's log) is kept a day, then removed by the TTL controller."""
DEFAULT_REQUESTS = {"cpu": "1", "memory": "2Gi"}
LOG_TAIL_BYTES = 16384
LOG_LINES = 20
"""Lines of a failed Job's log in the ``BuildFailed`` message."""
MESSAGE_MAX = 4096
BUILT = status.BUILT
"""The condition: True when every built variant's artifact is published."""
BUILDING, BUILD_FAILED, BUILT_REASON = "Building", "BuildFailed", "ArtifactsPublished"


class Reader(Protocol):
    def __call__(self, uri: str, *, s3: artifacts.S3Access | None = None
                 ) -> artifacts.SmallFile | artifacts.NotChecked: ...


class JobKube(Protocol):
    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> dict[str, Any] | None: ...

    def list(self, api_version: str, kind: str, namespace: str | None,
             label_selector: str | None = None) -> list[dict[str, Any]]: ...

    def apply(self, obj: Mapping[str, Any], *, answer: bool = True,
              field_manager: str | None = None) -> Any: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               uid: str | None) -> None: ...

    def pod_log(self, namespace: str, name: str, container: str, limit_bytes: int) -> str: ...


@dataclass
class PipelineState:
    """The pipeline's state in one operator process (in memory: a restart reads again)."""

    reader: Reader = artifacts.read_small
    cache: placement.ArtifactCache = field(default_factory=placement.ArtifactCache)
    reads: placement.HeaderReads = field(default_factory=placement.HeaderReads)
    progress_at: dict[str, datetime] = field(default_factory=dict)
    """Per Job name: when its progress was last read."""
    failures: dict[str, str] = field(default_factory=dict)
    """Per Job uid: its failure message (the log is read once)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


# ---- the key --------------------------------------------------------------------------------

def recipe_of(parsed: spec.ModelServiceSpec, build: spec.Build) -> dict[str, Any]:
    """The recipe the Job runs and the key hashes, in the form ``model-server optimize build``
    reads (model_server/optimize/recipe.py): the recipe, the framework and task, ``steps`` or
    ``epochs``, ``budget.maxSeconds``, the recipe's own knobs (``amount`` and ``ranking``;
    ``student``), how image pixels become a TensorFlow model's input (``inputRange``) and
    whether the data has labels. Not in it: URIs, credentials, output, resources, deadline,
    gates, autoRollout (they do not change what is produced). ``ranking`` is given only when it
    is not the default, which the build applies itself: a spec that names the default builds
    (and keys) the same artifact as one that leaves it out, as specs from before the field did."""
    out: dict[str, Any] = {"recipe": build.recipe, "framework": parsed.framework,
                           "task": parsed.task, "labels": build.data_labels}
    if build.steps is not None:
        out["steps"] = build.steps
    if build.epochs is not None:
        out["epochs"] = build.epochs
    if build.max_time_seconds is not None:
        out["budget"] = {"maxSeconds": build.max_time_seconds}
    if build.pruning_amount is not None:
        out["amount"] = build.pruning_amount
    if build.pruning_ranking not in (None, pipeline.DEFAULT_RANKING):
        out["ranking"] = build.pruning_ranking
    if build.student is not None:
        st = build.student
        out["student"] = {k: v for k, v in (
            ("layers", st.layers), ("hiddenSize", st.hidden_size),
            ("intermediateSize", st.intermediate_size), ("heads", st.heads)) if v is not None}
    if build.input_range is not None:
        out["inputRange"] = list(build.input_range)
    return out


def key_of(parsed: spec.ModelServiceSpec, build: spec.Build) -> str:
    assert parsed.model.sha256 is not None and build.data.sha256 is not None
    return pipeline.artifact_key(parsed.model.sha256, recipe_of(parsed, build),
                                 build.data.sha256)


def location(build: spec.Build, key: str, file: str = "") -> str:
    """``<output>/<key>/<file>``."""
    return f"{build.output}{key}/{file}"


def job_name(ms_name: str, variant: str, key: str) -> str:
    """``<ms>-<variant>-build-<key[:10]>``; a long prefix is cut with a hash of it."""
    suffix = f"-build-{key[:10]}"
    base = f"{ms_name}-{variant}"
    if len(base) + len(suffix) > 63:
        digest = hashlib.sha256(base.encode()).hexdigest()[:6]
        base = f"{base[:63 - len(suffix) - 7].rstrip('-')}-{digest}"
    return base + suffix


def reads_output(build: spec.Build) -> bool:
    """Whether the operator reads the output store itself (``s3://``); a ``pvc://`` output is
    mounted into the Job only, and the Job's result is the operator's record of it."""
    return build.output.startswith("s3://")


def publish_target(build: spec.Build) -> str:
    """What the Job's ``--publish`` names: the S3 prefix, or the claim's directory as
    ``file://`` under ``OUTPUT_DIR``."""
    if reads_output(build):
        return build.output
    sub = urlparse(build.output).path.strip("/")
    return f"file://{OUTPUT_DIR}/{sub + '/' if sub else ''}"


def data_file(build: spec.Build) -> str:
    return urlparse(build.data.uri).path.rstrip("/").rsplit("/", 1)[-1]


def data_path(build: spec.Build) -> str:
    """Where the build reads the pulled data: the file, or for an archive (an image data set)
    the directory ``model-server pull`` unpacked it into (``env.ARCHIVE_SUFFIXES``; the
    archive itself is not kept)."""
    name = data_file(build)
    return DATA_DIR if name.endswith(env.ARCHIVE_SUFFIXES) else f"{DATA_DIR}/{name}"


# ---- the Job --------------------------------------------------------------------------------

def build_job(ms: Mapping[str, Any], parsed: spec.ModelServiceSpec, variant: spec.Variant,
              key: str, opts: builders.BuildOptions) -> dict[str, Any]:
    """The Job that produces ``variant``'s artifact: init containers pull the source model
    and the data (each sha256-checked), then ``model-server optimize build`` publishes
    ``<output>/<key>/`` (write, checksum, MANIFEST last; a ``pvc://`` output's claim is
    mounted read-write at ``OUTPUT_DIR`` and published to as ``file://``). Pod Security
    ``restricted``; owned by the ModelService; no retries; ``deadline`` as
    activeDeadlineSeconds."""
    build = variant.build
    assert build is not None
    image = builders.serving_image(parsed, opts)
    policy = parsed.image_pull_policy
    src_volumes, src_mount, src_init = builders.pull_volume(
        parsed.model, parsed.credentials_secret, image, policy, volume_name="source",
        mount_path=SOURCE_DIR, container=SOURCE_PULL)
    data_volumes, data_mount, data_init = builders.pull_volume(
        build.data, None, image, policy, volume_name="data", mount_path=DATA_DIR,
        container=DATA_PULL)
    recipe = recipe_of(parsed, build)
    args = ["optimize", "build", "--source", SOURCE_DIR,
            "--data", data_path(build),
            "--recipe-json", pipeline.canonical(recipe),
            "--source-sha256", str(parsed.model.sha256),
            "--data-sha256", str(build.data.sha256),
            # the output prefix: the build adds <key>/ itself (msv_contract.pipeline)
            "--publish", publish_target(build), "--work", WORK_DIR]
    requests = dict(build.resources.get("requests") or DEFAULT_REQUESTS)
    resources: dict[str, Any] = {"requests": {k: str(v) for k, v in requests.items()}}
    if build.resources.get("limits"):
        resources["limits"] = {k: str(v) for k, v in build.resources["limits"].items()}
    container: dict[str, Any] = {
        "name": BUILD_CONTAINER, "image": image, "command": ["model-server"], "args": args,
        "env": [{"name": "HF_HOME", "value": "/tmp/hf"}],
        "resources": resources,
        "volumeMounts": [src_mount, data_mount, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": builders.container_security(),
        # the result (RESULT_KEYS) or the one-line error; the log's tail when it dies without
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if policy:
        container["imagePullPolicy"] = policy
    if build.output_secret:
        container["envFrom"] = [{"secretRef": {"name": build.output_secret}}]
    volumes = [*src_volumes, *data_volumes, {"name": "tmp", "emptyDir": {}}]
    if not reads_output(build):
        volumes.append({"name": OUTPUT_VOLUME, "persistentVolumeClaim": {
            "claimName": urlparse(build.output).netloc}})
        container["volumeMounts"].append({"name": OUTPUT_VOLUME, "mountPath": OUTPUT_DIR})
    name = job_name(parsed.name, variant.name, key)
    labels = {**builders.labels(parsed.name), LABEL_BUILD: variant.name,
              LABEL_KEY: key[:63]}
    pod_labels = {LABEL_BUILD: variant.name, LABEL_KEY: key[:63],
                  "app.kubernetes.io/managed-by": labels["app.kubernetes.io/managed-by"]}
    generation = (ms.get("metadata") or {}).get("generation")
    return {
        "apiVersion": JOB_API, "kind": "Job",
        "metadata": {"name": name, "namespace": parsed.namespace, "labels": labels,
                     "annotations": {ANNOTATION_GENERATION: str(generation or 0)},
                     "ownerReferences": [builders.owner_reference(ms)]},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": build.deadline_seconds,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": builders.pod_security(),
                    "automountServiceAccountToken": False,
                    "initContainers": [*src_init, *data_init],
                    "containers": [container],
                    "volumes": volumes,
                }},
        },
    }


# ---- reading what the Job says --------------------------------------------------------------

def parse_progress(log_text: str) -> dict[str, Any] | None:
    """The newest ``PROGRESS_PREFIX`` line of ``log_text`` as {stage (its phase), step,
    total, etaSeconds} (None: no readable one)."""
    for line in reversed(log_text.splitlines()):
        at = line.find(pipeline.PROGRESS_PREFIX)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(pipeline.PROGRESS_PREFIX):])
        except ValueError:
            continue
        if not isinstance(doc, Mapping) or not isinstance(doc.get("phase"), str):
            continue
        out: dict[str, Any] = {"stage": doc["phase"]}
        for k in ("step", "total"):
            if isinstance(doc.get(k), int) and not isinstance(doc.get(k), bool):
                out[k] = doc[k]
        eta = doc.get("etaSeconds")
        if isinstance(eta, int | float) and not isinstance(eta, bool):
            out["etaSeconds"] = round(float(eta), 1)
        return out
    return None


def last_lines(log_text: str, count: int = LOG_LINES) -> str:
    """The last ``count`` lines of a log that are not progress lines."""
    lines = [ln for ln in log_text.splitlines()
             if ln.strip() and pipeline.PROGRESS_PREFIX not in ln]
    return "\n".join(lines[-count:])


def parse_manifest(data: bytes, key: str) -> dict[str, Any] | str:
    """The MANIFEST's fields, or why it cannot be trusted."""
    try:
        doc = json.loads(data)
    except ValueError:
        return "MANIFEST is not JSON"
    if not isinstance(doc, Mapping):
        return "MANIFEST is not a JSON object"
    if doc.get("key") != key:
        return f"MANIFEST names key {doc.get('key')!r}, not {key}"
    if not isinstance(doc.get("sha256"), str) or not spec.SHA256.match(doc["sha256"]):
        return "MANIFEST has no sha256 of the artifact"
    return dict(doc)


def termination_result(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The build container's termination message as JSON (``RESULT_KEYS``), if any."""
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") != BUILD_CONTAINER:
            continue
        message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
        try:
            doc = json.loads(message or "")
        except ValueError:
            return None
        return dict(doc) if isinstance(doc, Mapping) else None
    return None


def termination_text(pod: Mapping[str, Any] | None) -> str:
    """Each container's termination message that is not the result (the error lines)."""
    out = []
    status = (pod or {}).get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or ()),
               *(status.get("containerStatuses") or ())]:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term.get("exitCode") not in (None, 0):
            message = str(term.get("message") or term.get("reason") or "").strip()
            out.append(f"{cs.get('name')} exited {term.get('exitCode')}"
                       + (f": {message}" if message else ""))
    return "; ".join(out)


def job_state(job: Mapping[str, Any]) -> tuple[str, str]:
    """(``Running`` | ``Succeeded`` | ``Failed``, the Job controller's reason and message)."""
    for c in (job.get("status") or {}).get("conditions") or ():
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return "Succeeded", ""
        if c.get("type") == "Failed":
            why = {"DeadlineExceeded": "the Job ran past its deadline (build.deadline)",
                   "BackoffLimitExceeded": "the build's pod failed"}.get(
                str(c.get("reason")), str(c.get("reason") or "failed"))
            return "Failed", f"{why}{': ' + c['message'] if c.get('message') else ''}"
    return "Running", ""


# ---- the pass -------------------------------------------------------------------------------

@dataclass
class VariantBuild:
    """What the pipeline says of one built variant in this pass."""

    key: str
    job: str
    phase: str
    """``Checking`` (its MANIFEST is being read), ``Pending``/``Running`` (the Job),
    ``Published`` (served), ``Failed``."""
    source: spec.ModelSource | None = None
    """What the variant serves (this key's artifact, or the previous one); None: nothing."""
    progress: dict[str, Any] | None = None
    failure: str | None = None
    provenance: dict[str, Any] | None = None
    """The record of the artifact it serves (``status.variants[].provenance``)."""
    ready_to_roll_out: bool | None = None

    def status(self) -> dict[str, Any]:
        """``status.variants[].build``: phase, key, Job, and while it runs the Job's own
        ``stage`` (its progress line's phase), step, total and etaSeconds."""
        out: dict[str, Any] = {"phase": self.phase, "key": self.key, "job": self.job}
        if self.progress and self.phase == "Running":
            out.update({k: v for k, v in self.progress.items() if k in PROGRESS_KEYS})
        if self.failure:
            out["message"] = self.failure
        if self.ready_to_roll_out is not None:
            out["readyToRollOut"] = self.ready_to_roll_out
        return out


PROGRESS_KEYS = ("stage", "step", "total", "etaSeconds")


@dataclass
class Builds:
    variants: dict[str, VariantBuild] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None

    @property
    def withheld(self) -> set[str]:
        """Variants with nothing finished to serve (no Deployment yet)."""
        return {n for n, b in self.variants.items() if b.source is None}

    def serve(self, parsed: spec.ModelServiceSpec) -> spec.ModelServiceSpec:
        """``parsed`` with each built variant's model the artifact it serves."""
        return replace(parsed, variants=tuple(
            replace(v, model=self.variants[v.name].source)
            if v.name in self.variants and self.variants[v.name].source is not None else v
            for v in parsed.variants))

    def condition(self) -> tuple[str, str, str] | None:
        """``Built``: (status, reason, message); None without built variants."""
        if not self.variants:
            return None
        failed = [f"variant {n}: {b.failure}" for n, b in self.variants.items()
                  if b.phase == "Failed"]
        if failed:
            return "False", BUILD_FAILED, "; ".join(failed)[:MESSAGE_MAX]
        waiting = [f"variant {n}: {b.phase.lower()} (Job {b.job})"
                   for n, b in self.variants.items() if b.phase != "Published"]
        if waiting:
            return "False", BUILDING, "; ".join(waiting)
        return "True", BUILT_REASON, "every built variant's artifact is published"

    def summary(self) -> status.BuildSummary:
        """What the status says of the pipeline."""
        return status.BuildSummary(
            self.condition(),
            {n: f"its artifact (Job {b.job}, {b.phase.lower()})"
             for n, b in self.variants.items() if b.source is None and b.phase != "Failed"},
            serving_records(self))


class Sources(Protocol):
    @property
    def kube(self) -> Any: ...

    @property
    def pipeline(self) -> PipelineState: ...

    @property
    def config(self) -> Any: ...


def _ask(ctx: Sources, parsed: spec.ModelServiceSpec, uri: str, secret: str | None
         ) -> artifacts.SmallFile | artifacts.NotChecked | placement.Pending:
    key = (uri, None, secret)
    state = ctx.pipeline

    def job() -> placement.Stored:
        access, problem = (placement.secret_access(ctx.kube, parsed.namespace, secret)
                           if secret else (None, None))
        value = state.reader(uri, s3=access)
        if isinstance(value, artifacts.NotChecked) and problem:
            value = artifacts.NotChecked(value.uri, f"{value.reason} ({problem})")
        return value

    found = state.reads.ask(key, job, state.cache, (parsed.namespace, parsed.name))
    assert not isinstance(found, artifacts.Artifact)
    return found


def _prior_records(prior: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out = {}
    for v in prior.get("variants") or ():
        if isinstance(v, Mapping) and isinstance(v.get("provenance"), Mapping):
            out[str(v.get("name"))] = v["provenance"]
    return out


def _prior_progress(prior: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(v.get("name")): v["build"] for v in prior.get("variants") or ()
            if isinstance(v, Mapping) and isinstance(v.get("build"), Mapping)}


def record(parsed: spec.ModelServiceSpec, build: spec.Build, key: str, job: str,
           manifest: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    """``status.variants[].provenance``: the verified record of a published artifact."""
    out: dict[str, Any] = {
        "sourceUri": parsed.model.uri, "sourceSha256": parsed.model.sha256,
        "recipe": recipe_of(parsed, build), "dataUri": build.data.uri,
        "dataSha256": build.data.sha256, "job": job, "key": key,
        "artifactUri": location(build, key, pipeline.ARTIFACT_FILE),
        "artifactSha256": manifest["sha256"], "codeVersion": pipeline.CODE_VERSION,
    }
    if isinstance(manifest.get("sizeBytes"), int):
        out["sizeBytes"] = manifest["sizeBytes"]
    if report is not None:
        out["report"] = headline(report)
    return out


REPORT_KEYS = ("sizeBytes", "parameters", "baselineSizeBytes", "baselineParameters",
               "latencyMsBatch1", "latencyMsBatch8", "baselineLatencyMsBatch1",
               "baselineLatencyMsBatch8", "latencyRatio", "agreement", "accuracy",
               "baselineAccuracy", "examples")
"""The report.json numbers copied into the status (the rest stays in the store)."""


def headline(report: Mapping[str, Any]) -> dict[str, Any]:
    """report.json's headline numbers (``REPORT_KEYS``; its ``summary`` object when it has
    one, else its top level)."""
    src = report.get("summary") if isinstance(report.get("summary"), Mapping) else report
    assert isinstance(src, Mapping)
    out = {k: src[k] for k in REPORT_KEYS
           if isinstance(src.get(k), int | float) and not isinstance(src.get(k), bool)}
    if ("latencyRatio" not in out and out.get("baselineLatencyMsBatch1")
            and "latencyMsBatch1" in out):
        out["latencyRatio"] = round(out["latencyMsBatch1"] / out["baselineLatencyMsBatch1"], 4)
    return out


def gates_pass(build: spec.Build, report: Mapping[str, Any] | None) -> bool | None:
    """Whether the offline report passes the variant's gates (None: no report yet)."""
    if not report:
        return None
    agreement, ratio = report.get("agreement"), report.get("latencyRatio")
    return (isinstance(agreement, int | float) and agreement >= build.min_agreement
            and isinstance(ratio, int | float) and ratio <= build.max_latency_ratio)


def resolve(ctx: Sources, ms: Mapping[str, Any], parsed: spec.ModelServiceSpec,
            opts: builders.BuildOptions, moment: datetime) -> Builds:
    """Every built variant's state this pass (see the module's docstring); creates and
    deletes Jobs. Raises kube.Transient/Conflict for the caller to retry."""
    out = Builds()
    built = [v for v in parsed.variants if v.build is not None]
    if not built:
        return out
    meta = ms.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    prior = ms.get("status") or {}
    records, progress = _prior_records(prior), _prior_progress(prior)
    jobs = {str((j.get("metadata") or {}).get("name")): j for j in ctx.kube.list(
        JOB_API, "Job", parsed.namespace, f"{LABEL_MODELSERVICE}={parsed.name}")}
    poll = float(getattr(ctx.config, "measure_seconds", 15.0) or 15.0)
    for variant in built:
        build = variant.build
        assert build is not None
        key = key_of(parsed, build)
        name = job_name(parsed.name, variant.name, key)
        for other, job in jobs.items():  # a running Job of an older recipe of this variant
            labels = (job.get("metadata") or {}).get("labels") or {}
            if (labels.get(LABEL_BUILD) == variant.name and other != name
                    and job_state(job)[0] == "Running"):
                ctx.kube.delete(JOB_API, "Job", parsed.namespace, other,
                                (job.get("metadata") or {}).get("uid"))
                log.info("Deleted Job %s: variant %s's recipe changed", other, variant.name)
        vb = VariantBuild(key, name, "Checking")
        out.variants[variant.name] = vb
        earlier = records.get(variant.name) or {}
        if (earlier.get("key") == key and earlier.get("artifactSha256")
                and earlier.get("artifactUri") == location(build, key, pipeline.ARTIFACT_FILE)):
            vb.phase, vb.provenance = "Published", dict(earlier)
        else:
            vb.provenance = dict(earlier) if earlier.get("artifactSha256") else None
            _check(ctx, ms, parsed, variant, key, name, jobs.get(name), generation, moment,
                   poll, progress.get(variant.name), opts, vb, out)
        if vb.provenance and vb.provenance.get("artifactSha256"):
            vb.source = spec.ModelSource(str(vb.provenance["artifactUri"]),
                                         str(vb.provenance["artifactSha256"]),
                                         build.output_secret)
        if vb.phase == "Published":
            report = (vb.provenance or {}).get("report")
            if report is None:  # the report is read on its own; serving does not wait
                report = _report(ctx, parsed, build, key, vb, out)
            vb.ready_to_roll_out = gates_pass(build, report)
            if vb.ready_to_roll_out and build.auto_rollout and not (
                    earlier.get("key") == key and earlier.get("report")):
                out.events.append(("Normal", "ReadyToRollOut", (
                    f"variant {variant.name}: its offline report passes its gates; start the "
                    f"rollout with: kubectl msv rollout {parsed.name} {variant.name}")))
    return out


def _report(ctx: Sources, parsed: spec.ModelServiceSpec, build: spec.Build, key: str,
            vb: VariantBuild, out: Builds) -> dict[str, Any] | None:
    if not reads_output(build):  # the Job's result carried it, or nothing will
        return None
    read = _ask(ctx, parsed, location(build, key, pipeline.REPORT_FILE), build.output_secret)
    if isinstance(read, placement.Pending):
        out.requeue_after = _sooner(out.requeue_after, read.due_in + 1.0)
        return None
    if isinstance(read, artifacts.SmallFile) and read.data is not None:
        try:
            doc = json.loads(read.data)
        except ValueError:
            return None
        if isinstance(doc, Mapping) and vb.provenance is not None:
            vb.provenance["report"] = headline(doc)
            return dict(vb.provenance["report"])
    return None


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _check(ctx: Sources, ms: Mapping[str, Any], parsed: spec.ModelServiceSpec,
           variant: spec.Variant, key: str, name: str, job: Mapping[str, Any] | None,
           generation: int, moment: datetime, poll: float,
           shown: Mapping[str, Any] | None, opts: builders.BuildOptions, vb: VariantBuild,
           out: Builds) -> None:
    """The MANIFEST, then the Job: fills ``vb``."""
    build = variant.build
    assert build is not None
    manifest_uri = location(build, key, pipeline.MANIFEST_FILE)
    read = (_ask(ctx, parsed, manifest_uri, build.output_secret) if reads_output(build)
            else artifacts.read_small(manifest_uri))  # NotChecked at once: not read
    if isinstance(read, placement.Pending):
        out.requeue_after = _sooner(out.requeue_after, read.due_in + 1.0)
        return
    if isinstance(read, artifacts.SmallFile) and read.data is not None:
        found = parse_manifest(read.data, key)
        if isinstance(found, str):
            vb.phase, vb.failure = "Failed", f"{manifest_uri}: {found}; not served"
            return
        result = termination_result(_pod(ctx, parsed, name)) if (
            job is not None and job_state(job)[0] == "Succeeded") else None
        if result is not None and result.get("sha256") != found["sha256"]:
            vb.phase = "Failed"
            vb.failure = (f"Job {name} reported sha256 {result.get('sha256')} but {manifest_uri} "
                          f"says {found['sha256']}; not served")
            return
        vb.phase = "Published"
        vb.provenance = record(parsed, build, key, name if job is not None else "", found,
                               None)
        return
    if isinstance(read, artifacts.NotChecked):
        log.info("Cannot read %s (%s); the Job decides", manifest_uri, read.reason)
    # not published: its Job
    if job is None:
        try:
            ctx.kube.apply(build_job(ms, parsed, variant, key, opts), answer=False)
        except kubeapi.Rejected as e:
            vb.phase, vb.failure = "Failed", f"Job {name} was refused: {e}"
            return
        log.info("Created Job %s for variant %s (key %s)", name, variant.name, key[:12])
        vb.phase = "Pending"
        out.requeue_after = _sooner(out.requeue_after, poll)
        return
    state, why = job_state(job)
    job_meta = job.get("metadata") or {}
    if state == "Running":
        vb.phase = "Running"
        vb.progress = dict(shown) if shown and shown.get("key") == key else None
        last = ctx.pipeline.progress_at.get(name)
        if last is None or (moment - last).total_seconds() >= poll:
            ctx.pipeline.progress_at[name] = moment
            pod = _pod(ctx, parsed, name)
            if pod is not None and _running(pod):
                text = _log(ctx, parsed, pod)
                found_progress = parse_progress(text)
                if found_progress is not None:
                    vb.progress = found_progress
        out.requeue_after = _sooner(out.requeue_after, poll)
        return
    ctx.pipeline.progress_at.pop(name, None)
    if state == "Succeeded":
        pod = _pod(ctx, parsed, name)
        result = termination_result(pod)
        # the Job says it published: the MANIFEST is read again at once
        ctx.pipeline.cache.entries.pop((manifest_uri, None, build.output_secret), None)
        if result is not None and (result.get("key") != key
                                   or not spec.SHA256.match(str(result.get("sha256")))):
            vb.phase = "Failed"
            vb.failure = (f"Job {name} succeeded but its result names key "
                          f"{result.get('key')!r}; not served")
            return
        if isinstance(read, artifacts.NotChecked) and result is not None:
            # the operator cannot read the store: the Job's own word, its report's numbers
            # included (the pull checks the sha256, so nothing but the finished artifact can
            # be served)
            vb.phase = "Published"
            vb.provenance = record(parsed, build, key, name, result,
                                   result if isinstance(result.get("summary"), Mapping)
                                   else None)
            return
        if not isinstance(read, artifacts.NotChecked):
            vb.phase = "Checking"
            out.requeue_after = _sooner(out.requeue_after, 1.0)
            return
        # nothing says what it published: reported as a failure (a new generation retries)
        why = (f"its pod ended without a result (the termination message) and the operator "
               f"cannot read {manifest_uri}")
    # failed
    uid = str(job_meta.get("uid") or name)
    made_for = int((job_meta.get("annotations") or {}).get(ANNOTATION_GENERATION) or 0)
    if generation > made_for:  # the spec changed since: try again
        ctx.kube.delete(JOB_API, "Job", parsed.namespace, name, job_meta.get("uid"))
        ctx.pipeline.failures.pop(uid, None)
        log.info("Deleted failed Job %s to build again for generation %s", name, generation)
        vb.phase = "Pending"
        out.requeue_after = _sooner(out.requeue_after, 1.0)
        return
    message = ctx.pipeline.failures.get(uid)
    if message is None:
        pod = _pod(ctx, parsed, name)
        parts = [f"Job {name} failed: {why}"]
        ended = termination_text(pod)
        if ended:
            parts.append(ended)
        if pod is not None:
            lines = last_lines(_log(ctx, parsed, pod))
            if lines:
                parts.append(f"last log lines:\n{lines}")
        message = "; ".join(parts)[:MESSAGE_MAX]
        with ctx.pipeline.lock:
            ctx.pipeline.failures[uid] = message
        out.events.append(("Warning", BUILD_FAILED, f"variant {variant.name}: {message}"))
    vb.phase, vb.failure = "Failed", message


def _pod(ctx: Sources, parsed: spec.ModelServiceSpec, job: str) -> dict[str, Any] | None:
    pods = ctx.kube.list("v1", "Pod", parsed.namespace, f"{JOB_NAME_SELECTOR}={job}")
    pods.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    return pods[-1] if pods else None


def _running(pod: Mapping[str, Any]) -> bool:
    """Its build container has started (its log exists)."""
    return any(cs.get("name") == BUILD_CONTAINER
               and {"running", "terminated"} & set(cs.get("state") or {})
               for cs in (pod.get("status") or {}).get("containerStatuses") or ())


def _log(ctx: Sources, parsed: spec.ModelServiceSpec, pod: Mapping[str, Any]) -> str:
    """The tail of the build container's log (an init container's when it failed first)."""
    name = str((pod.get("metadata") or {}).get("name"))
    status = pod.get("status") or {}
    container = BUILD_CONTAINER
    for cs in status.get("initContainerStatuses") or ():
        if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode") not in (None, 0):
            container = str(cs.get("name"))
    try:
        return str(ctx.kube.pod_log(parsed.namespace, name, container, LOG_TAIL_BYTES))
    except kubeapi.ApiError as e:
        log.debug("Cannot read the log of %s: %s", name, e)
        return ""


def serving_records(builds: Builds) -> dict[str, dict[str, Any]]:
    """Per built variant: ``build`` and ``provenance`` for its status entry."""
    out: dict[str, dict[str, Any]] = {}
    for name, vb in builds.variants.items():
        entry: dict[str, Any] = {"build": vb.status()}
        if vb.provenance:
            entry["provenance"] = dict(vb.provenance)
            entry["derivedFrom"] = (f"{vb.provenance.get('sourceUri')}@sha256:"
                                    f"{vb.provenance.get('sourceSha256')}")
        out[name] = entry
    return out
