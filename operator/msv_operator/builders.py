"""Pure builders: a ModelService (plus the operator's options) -> the manifests it needs.

No I/O, no clock, no Kubernetes client: `build_all` returns plain dicts ready for
server-side apply, and the reconciler decides what to send. Per variant: a Deployment of
the model-server image, (with two or more variants) a Service and (with spec.autoscaling) an
HPA; for the whole ModelService: a stable Service, a ServiceMonitor when the cluster serves
monitoring.coreos.com/v1, and an HTTPRoute with weighted backends when Gateway API is
served and spec.gateway names a parent (with the gateway's retries when the cluster's
HTTPRoute CRD has them, and one header-matched rule per variant with
spec.gateway.variantHeader; `build_http_route`) and, while those retries are on, an
XBackendTrafficPolicy that caps them with a budget per backend Service when the cluster
serves that kind (`build_retry_budget`).

The caller passes the *effective weights* (`Serving`; spec.traffic, then the rollout's step
or promotion and the brownout, see `rollout`, `brownout`), which drive the HTTPRoute and the
replica split. The `serving` label in a pod template follows spec.traffic alone, so weights
the operator moves by itself never roll a Deployment: `pod_marks` says what the running pods
must carry instead (the effective `serving` label and, on the stable variants while a
rollout is active, the mirror annotation the server reads through the downward API), and
the reconciler patches the live pods.

With spec.gpu, a variant's pods request what its GPU placement says (``GpuPlacement``: the
resource, count and products the reconciler's GPU fit chose or kept; without one, spec.gpu as
written, whole GPUs unless it names a resource) and its Deployment carries the hash of the
inputs that placement was chosen for; ``gpu_target_of`` reads the placement back from a live
Deployment. A variant the GPU fit refused (``withheld``) gets no Deployment and no HPA.

The image is the one configured for the framework's runtime (capability table) and device
(`serving_image`; `spec.server.image` overrides it): a spec no configured image serves (no
image for that runtime on that device, or a variant's quantization the device cannot run)
is refused with `NoServingImage` before any object is built.

Traffic split without a gateway that routes the ModelService (``Serving.routed`` False) is
by pods: the stable Service selects the pods of every variant with a non-zero weight, so each
variant receives a share proportional to its ready replicas. Replicas are therefore split by
weight, and where that split is more than ``shares.TOLERANCE`` points off a weight the stable
side gets the extra pods ``shares.plan`` finds within the replica bounds (Deployment replicas;
with autoscaling the HPAs' minReplicas). status.variants[].share says what is delivered
(docs/rollouts.md, "What a weight means with and without a gateway").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from msv_contract import capabilities as caps
from msv_contract import env, metrics
from msv_contract.api import (
    ANNOTATION_MIRROR,
    ANNOTATION_PLACEMENT_INPUTS,
    API_VERSION,
    KIND,
    LABEL_MODELSERVICE,
    LABEL_SERVING,
    LABEL_VARIANT,
    MANAGED_BY,
)
from msv_operator import pools, shares, zero
from msv_operator.config import RuntimeImages, image_env
from msv_operator.rollout import spec_weights
from msv_operator.spec import InvalidSpecError, ModelServiceSpec, ModelSource, Variant, parse_spec

MIRROR_ANNOTATION = ANNOTATION_MIRROR
MODEL_DIR = env.MODEL_MOUNT
HTTP_PORT = env.HTTP_PORT
GRPC_PORT = env.GRPC_PORT_NUMBER
AUTH_DIR = env.AUTH_MOUNT
TLS_DIR = env.TLS_MOUNT
PODINFO_DIR = env.PODINFO_MOUNT
INFLIGHT_METRIC = metrics.INFLIGHT
GPU_TAINT_KEY = "nvidia.com/gpu"
"""The taint managed GPU node pools carry (tolerated by every GPU pod)."""
GPU_PRODUCT_LABEL = pools.PRODUCT_LABEL
PLACEMENT_ANNOTATION = ANNOTATION_PLACEMENT_INPUTS
DEFAULT_REQUESTS = {"cpu": "500m", "memory": "1Gi"}
SERVER_CONTAINER = "model-server"
PULL_CONTAINER = "model-pull"
DRAIN_SECONDS = 5
"""After SIGTERM the server answers unready but keeps serving this long, so the endpoint is
gone from every Service/gateway before it stops accepting (docs/model-server.md)."""
TERMINATION_GRACE_SECONDS = 30
"""Drain + up to 10 s for requests in flight + shutdown, with room to spare."""
STARTUP_PROBE_PERIOD_SECONDS = 1
"""The startup probe asks ``READY_PATH`` this often until the model is loaded; its failure
budget is spec.server.startupTimeout."""
STARTUP_PROBE_WAIT_SECONDS = 0.8
"""Each startup probe asks the server to hold its answer this long while the model loads
(``READY_PATH?wait=``; under the probe's 1 s timeout), so the kubelet is nearly always
asking: the pod is Ready within milliseconds of the load's end (the kubelet runs the readiness
probe at once when the startup probe succeeds), not up to a period later."""
READINESS_PERIOD_SECONDS = 5
"""Steady state, after the start: readiness every 5 s, 3 failures to leave the endpoints."""
LIVENESS_PERIOD_SECONDS = 10
"""Steady state, after the start: liveness every 10 s, 6 failures to restart."""


def probes(spec: ModelServiceSpec) -> dict[str, dict[str, Any]]:
    """The server container's probes. The startup probe asks the ready endpoint every second
    for up to spec.server.startupTimeout: liveness and readiness do not run until it
    succeeds (a slow load is never killed by liveness), and the pod is Ready as soon as the
    model loaded (``STARTUP_PROBE_WAIT_SECONDS``), not on the probe's next tick."""
    scheme = "HTTPS" if spec.tls_secret else "HTTP"
    ready = {"path": env.READY_PATH, "port": "http", "scheme": scheme}
    live = {"path": env.LIVE_PATH, "port": "http", "scheme": scheme}
    budget = math.ceil(spec.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS)
    waiting = {**ready, "path": f"{env.READY_PATH}?{env.READY_WAIT_PARAM}="
               f"{STARTUP_PROBE_WAIT_SECONDS}"}
    return {
        "startupProbe": {"httpGet": waiting, "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
                         "timeoutSeconds": 1, "failureThreshold": max(budget, 1)},
        "readinessProbe": {"httpGet": dict(ready), "periodSeconds": READINESS_PERIOD_SECONDS,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": live, "periodSeconds": LIVENESS_PERIOD_SECONDS,
                          "failureThreshold": 6},
    }


@dataclass(frozen=True)
class BuildOptions:
    """What the builders need to know about the operator and the cluster."""

    images: Mapping[str, RuntimeImages]
    """Model-server images per runtime (CPU and GPU) when spec.server.image is empty."""
    service_monitor: bool
    """The cluster serves monitoring.coreos.com/v1 ServiceMonitor."""
    gateway_api: bool
    """The cluster serves gateway.networking.k8s.io/v1 HTTPRoute."""
    gateway_retry: bool = False
    """The cluster's HTTPRoute CRD has ``rules[].retry`` (Gateway API's experimental channel)."""
    retry_budget: bool = False
    """The cluster serves gateway.networking.x-k8s.io/v1alpha1 XBackendTrafficPolicy (Gateway
    API's experimental channel, GEP-3388)."""
    model_cache_url: str | None = None
    """The node-local model cache agent's Service: the pull init containers get ``--cache``
    with it (docs/model-cache.md); None: they pull from the store."""


class NoServingImage(InvalidSpecError):
    """No configured model-server image serves the spec (``Ready=False``, this reason; no
    Deployment is built): its framework's runtime has no image for the device, or a variant
    asks for a quantization the capability table says the device cannot run."""

    reason = "NoServingImage"


def serving_image(spec: ModelServiceSpec, opts: BuildOptions) -> str:
    """The model-server image of every variant of ``spec``: ``spec.server.image``, else the
    one configured for its framework's runtime on its device (GPU with ``spec.gpu``).
    Raises NoServingImage naming the field and the image (or the setting that lacks one)."""
    fw = caps.FRAMEWORKS[spec.framework]
    gpu = spec.gpu is not None
    device = "cuda" if gpu else "cpu"
    image = spec.image
    if not image:
        configured = opts.images.get(fw.runtime)
        image = configured.on(gpu) if configured is not None else None
    if not image:
        value = "gpuImage" if gpu else "image"
        raise NoServingImage(
            f"spec.model.framework: {spec.framework} runs in the {fw.runtime} runtime, and the "
            f"operator has no {fw.runtime} model-server image for {'GPU' if gpu else 'CPU'}"
            f"{' variants (spec.gpu)' if gpu else ' variants'}; set the operator's "
            f"{image_env(fw.runtime, gpu)} (chart value modelServer.images.{fw.runtime}.{value})"
            f", or spec.server.image{', or remove spec.gpu' if gpu else ''}")
    for i, v in enumerate(spec.variants):
        runs_on = caps.devices(spec.framework, v.quantization)
        if device not in runs_on:
            raise NoServingImage(
                f"spec.variants[{i}].optimization.quantization: {v.quantization} of framework "
                f"{spec.framework} runs on {', '.join(runs_on)} only, but the variant would run "
                f"on {device} ({'spec.gpu' if gpu else 'no spec.gpu'}, image {image}): "
                f"{fw.device_limit_reason}")
    return image


@dataclass(frozen=True)
class GpuPlacement:
    """Where one GPU variant's pods go (the reconciler's GPU fit): ``target``, and the hash of
    the inputs it was chosen for, written on the Deployment (``PLACEMENT_ANNOTATION``)."""

    target: pools.Target
    inputs: str


def spec_target(spec: ModelServiceSpec) -> pools.Target | None:
    """spec.gpu as written: its resource (whole GPUs when it names none), count, products."""
    if spec.gpu is None:
        return None
    return pools.Target(spec.gpu.resource_name or pools.GPU_RESOURCE, spec.gpu.count,
                        tuple(spec.gpu.products))


def gpu_target_of(deployment: Mapping[str, Any] | None) -> pools.Target | None:
    """The placement a live Deployment's pods have (what ``build_deployment`` wrote): the
    GPU resource its server container is limited to, the count, the products of its node
    affinity; None without one."""
    pod = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    container = next((c for c in pod.get("containers") or ()
                      if c.get("name") == SERVER_CONTAINER), None)
    limits = ((container or {}).get("resources") or {}).get("limits") or {}
    extended = [k for k in limits if "/" in str(k)]
    resource = next((k for k in extended if pools.is_gpu_resource(k)),
                    extended[0] if extended else None)
    if resource is None:
        return None
    try:
        count = int(str(limits[resource]))
    except ValueError:
        return None
    products: tuple[str, ...] = ()
    required = ((((pod.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution")) or {})
    for term in required.get("nodeSelectorTerms") or ():
        for expr in term.get("matchExpressions") or ():
            if expr.get("key") == GPU_PRODUCT_LABEL and expr.get("operator") == "In":
                products = tuple(str(v) for v in expr.get("values") or ())
    return pools.Target(str(resource), count, products)


@dataclass(frozen=True)
class Mirror:
    """Where the stable variants send a sampled share of their requests during a rollout."""

    url: str
    """``http(s)://<candidate Service clusterIP>:80`` (the local cluster has no DNS)."""
    percent: int
    variant: str
    """The candidate's name (labels the agreement metrics)."""


@dataclass(frozen=True)
class Serving:
    """The effective weights (variant -> percent), the mirror, if any, and whether a gateway
    routes them exactly (``routed``: the HTTPRoute is accepted by a programmed Gateway)."""

    weights: Mapping[str, int]
    mirror: Mirror | None = None
    routed: bool = False
    """False: requests split by the stable Service's ready pods, so the replica split follows
    ``shares.plan`` (extra stable pods where the plain split is off a weight)."""


def object_name(ms_name: str, variant: str | None = None) -> str:
    """`<ms>-<variant>`, cut to 63 characters with a stable hash suffix when longer."""
    name = ms_name if variant is None else f"{ms_name}-{variant}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def labels(ms_name: str, variant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "modelservice",
        "app.kubernetes.io/instance": ms_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODELSERVICE: ms_name,
    }
    if variant is not None:
        out[LABEL_VARIANT] = variant
        out["app.kubernetes.io/component"] = "model-server"
    return out


def owner_reference(ms: Mapping[str, Any]) -> dict[str, Any]:
    meta = ms["metadata"]
    return {
        "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
        "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
    }


def _metadata(ms: Mapping[str, Any], name: str, variant: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ms["metadata"]["namespace"],
        "labels": labels(ms["metadata"]["name"], variant),
        "ownerReferences": [owner_reference(ms)],
    }


def variant_replicas(spec: ModelServiceSpec, weights: Mapping[str, int],
                     routed: bool = False) -> dict[str, int]:
    """Replicas per variant when no HPA owns them: explicit ones win, the rest split
    `spec.replicas` by the effective weight (at least one pod for any variant with weight;
    ``shares.floor_of``). Not ``routed``: the split ``shares.plan`` finds when it represents
    the weights (more stable pods, within spec.replicas per variant), else the plain one."""
    split = shares.plan(spec, weights).split if not routed else None
    planned = split.pods if split is not None and split.representable else {}
    out: dict[str, int] = {}
    for v in spec.variants:
        if v.replicas is not None:
            out[v.name] = v.replicas
            continue
        out[v.name] = planned.get(v.name) or shares.floor_of(spec.replicas,
                                                             weights.get(v.name, 0))
    return out


def hpa_min_replicas(spec: ModelServiceSpec, serving: Serving) -> dict[str, int]:
    """Per variant with autoscaling: minReplicas of its HPA. Not ``routed``: raised to the
    split ``shares.plan`` finds when it represents the weights (never above maxReplicas)."""
    assert spec.autoscaling is not None
    low = spec.autoscaling.min_replicas
    split = shares.plan(spec, serving.weights).split if not serving.routed else None
    planned = split.pods if split is not None and split.representable else {}
    return {v.name: max(low, planned.get(v.name, low)) for v in spec.variants}


def _model_volume(src: ModelSource, credentials_secret: str | None, image: str,
                  pull_policy: str | None, security: dict[str, Any],
                  cache_url: str | None = None, *, volume_name: str = "model",
                  mount_path: str = MODEL_DIR, container: str = PULL_CONTAINER
                  ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """The volumes holding the model (or any pulled file: ``volume_name`` at ``mount_path``),
    its mount, and the init container ``container`` that fills it (``model-server pull``,
    checking the sha256 when the source names one; the source's own credentials Secret, else
    ``credentials_secret``).

    ``pvc://claim/dir``: the directory is mounted read-only, nothing is pulled.
    ``pvc://claim/…/model.tar.gz`` (an archive, ``env.ARCHIVE_SUFFIXES``; a built variant's
    artifact on a volume): the claim is mounted read-only into the init container only, which
    pulls the archive from it (``file://``) into an emptyDir, unpacking it and checking its
    sha256, as from a store."""
    credentials_secret = src.credentials_secret or credentials_secret
    parsed = urlparse(src.uri)
    mount: dict[str, Any] = {"name": volume_name, "mountPath": mount_path, "readOnly": True}
    sub_path = parsed.path.strip("/")
    pull_uri = src.uri
    claim_volume: dict[str, Any] | None = None
    claim_mount: dict[str, Any] | None = None
    if src.scheme == "pvc" and not sub_path.endswith(env.ARCHIVE_SUFFIXES):
        if sub_path:
            mount["subPath"] = sub_path
        volume = {"name": volume_name, "persistentVolumeClaim": {
            "claimName": parsed.netloc, "readOnly": True}}
        return [volume], mount, []
    if src.scheme == "pvc":
        claim_volume = {"name": f"{volume_name}-claim", "persistentVolumeClaim": {
            "claimName": parsed.netloc, "readOnly": True}}
        claim_dir = f"{env.CLAIM_MOUNT}/{volume_name}"
        claim_mount = {"name": claim_volume["name"], "mountPath": claim_dir, "readOnly": True}
        pull_uri = f"file://{claim_dir}/{sub_path}"
        cache_url = None  # the node's cache agent cannot read the pod's volume
        credentials_secret = None
    if src.scheme == "file":
        # Single-node development clusters only: hostPath is refused where Pod Security
        # "restricted" is enforced (docs/modelservice-api.md).
        volume = {"name": volume_name, "hostPath": {"path": parsed.path, "type": "Directory"}}
        return [volume], mount, []
    args = ["pull", pull_uri, mount_path]
    if src.sha256:
        args += ["--sha256", src.sha256]
    if cache_url:
        args += ["--cache", cache_url]
    init: dict[str, Any] = {
        "name": container,
        "image": image,
        "command": ["model-server"],
        "args": args,
        "volumeMounts": [{"name": volume_name, "mountPath": mount_path},
                         {"name": "tmp", "mountPath": "/tmp"},
                         *([claim_mount] if claim_mount else [])],
        "securityContext": security,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        # `model-server pull` writes its one-line error to /dev/termination-log; anything
        # that dies without one still shows the tail of its log in the pod status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if pull_policy:
        init["imagePullPolicy"] = pull_policy
    if credentials_secret:
        init["envFrom"] = [{"secretRef": {"name": credentials_secret}}]
    volumes = [{"name": volume_name, "emptyDir": {}}]
    if claim_volume:
        volumes.append(claim_volume)
    return volumes, mount, [init]


def _env(spec: ModelServiceSpec, variant: Variant) -> list[dict[str, str]]:
    out = {
        env.MODEL_NAME: spec.name,
        env.VARIANT: variant.name,
        env.MODEL_DIR: MODEL_DIR,
        env.FRAMEWORK: spec.framework,
        env.TASK: spec.task or "",
        env.QUANTIZATION: variant.quantization,
        env.PRUNING_METHOD: variant.pruning_method,
        env.PRUNING_AMOUNT: str(variant.pruning_amount),
        env.MAX_BATCH_SIZE: str(spec.max_batch_size),
        env.MAX_DELAY_MS: str(spec.max_delay_ms),
        env.DEVICE: "cuda" if spec.gpu else "cpu",
        env.PORT: str(HTTP_PORT),
        env.DRAIN_SECONDS: str(DRAIN_SECONDS),
        "HF_HOME": "/tmp/hf",
    }
    if spec.torch_threads:
        out[env.TORCH_THREADS] = str(spec.torch_threads)
    out[env.GRPC_PORT] = str(GRPC_PORT)
    if spec.auth_token_secret:
        out[env.AUTH_TOKENS] = AUTH_DIR
        out[env.AUTH_METRICS] = "true" if spec.auth_protect_metrics else "false"
    if spec.tls_secret:
        out[env.TLS_CERT_FILE] = f"{TLS_DIR}/{env.TLS_CERT_KEY}"
        out[env.TLS_KEY_FILE] = f"{TLS_DIR}/{env.TLS_KEY_KEY}"
    # The mirror target arrives as a pod annotation (reconcile), read through the downward
    # API: a rollout starting or ending changes no template and restarts no pod.
    out[env.MIRROR_FILE] = env.PODINFO_ANNOTATIONS
    return [{"name": k, "value": v} for k, v in out.items()]


PODINFO_VOLUME: dict[str, Any] = {"name": "podinfo", "downwardAPI": {"items": [
    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}
"""The pod's own annotations as a file (the kubelet refreshes it when they change)."""


def mirror_annotation(mirror: Mirror) -> str:
    """The value of MIRROR_ANNOTATION for ``mirror`` (stable text: compared with the live)."""
    return json.dumps({"url": mirror.url, "percent": mirror.percent,
                       "variant": mirror.variant}, sort_keys=True, separators=(",", ":"))


def _secret_volumes(spec: ModelServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of the auth-token and TLS Secrets: mounted, never read here.

    ``optional``: a missing Secret mounts as an empty directory, the server refuses to start
    without its files (exit 2, the reason in its termination message) and the status names
    the Secret; a required one would hold the pod in ContainerCreating with nothing on the
    pod to say why. Either way nothing is served without the Secret."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for name, secret, path in (("auth-tokens", spec.auth_token_secret, AUTH_DIR),
                               ("tls", spec.tls_secret, TLS_DIR)):
        if secret:
            volumes.append({"name": name, "secret": {"secretName": secret, "optional": True}})
            mounts.append({"name": name, "mountPath": path, "readOnly": True})
    return volumes, mounts


def service_ports() -> list[dict[str, Any]]:
    """The ports of every Service of a ModelService (the activator's slices mirror them)."""
    return _service_ports()


def object_metadata(ms: Mapping[str, Any], name: str, variant: str | None = None
                    ) -> dict[str, Any]:
    """Name, namespace, labels and the controller ownerReference of an object of ``ms``."""
    return _metadata(ms, name, variant)


def _service_ports() -> list[dict[str, Any]]:
    return [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}]


def cpu_request(spec: ModelServiceSpec) -> str | None:
    """The server container's CPU request as its Deployment gets it (``spec.server.resources``
    or ``DEFAULT_REQUESTS``; a CPU limit without a request is the request, as Kubernetes
    sets it); None when it has neither."""
    resources = _resources(spec, None)
    cpu = resources["requests"].get("cpu") or (resources.get("limits") or {}).get("cpu")
    return None if cpu is None else str(cpu)


def _resources(spec: ModelServiceSpec, target: pools.Target | None) -> dict[str, Any]:
    requests = dict(spec.resources.get("requests") or DEFAULT_REQUESTS)
    limits = dict(spec.resources.get("limits") or {})
    if target is not None:
        # Extended resources must be requested and limited to the same count.
        requests.update(target.resources())
        limits.update(target.resources())
    out: dict[str, Any] = {"requests": {k: str(v) for k, v in requests.items()}}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def container_security() -> dict[str, Any]:
    """Every container's securityContext (Pod Security ``restricted``)."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    """Every pod's securityContext (Pod Security ``restricted``)."""
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}


def pull_volume(src: ModelSource, credentials_secret: str | None, image: str,
                pull_policy: str | None, *, volume_name: str, mount_path: str, container: str
                ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """``_model_volume`` for another pod than a variant's (the optimization Job's source and
    data; no model cache)."""
    return _model_volume(src, credentials_secret, image, pull_policy, container_security(),
                         None, volume_name=volume_name, mount_path=mount_path,
                         container=container)


def model_volume(spec: ModelServiceSpec, src: ModelSource, opts: BuildOptions
                 ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """The model's volumes, its mount and the pull init container, exactly as a variant's pods
    have them (image, credentials, ``--sha256``, ``--cache`` with the operator's model cache):
    the Deployments and the model cache's pre-warming Jobs (``prewarm``) both build it here."""
    return _model_volume(src, spec.credentials_secret, serving_image(spec, opts),
                         spec.image_pull_policy, container_security(), opts.model_cache_url)


def tolerations(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """The tolerations of a variant's pods: with spec.gpu the GPU pools' taint and
    spec.gpu.tolerations; none without."""
    if spec.gpu is None:
        return []
    return [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
            *[dict(t) for t in spec.gpu.tolerations]]


def build_deployment(ms: Mapping[str, Any], spec: ModelServiceSpec, variant: Variant,
                     opts: BuildOptions, replicas: int | None,
                     scrape_annotations: bool,
                     placement: GpuPlacement | None = None) -> dict[str, Any]:
    """The variant's Deployment; with spec.gpu its pods request ``placement``'s target (spec.gpu
    as written without one)."""
    name = object_name(spec.name, variant.name)
    target = None
    if spec.gpu is not None:
        target = placement.target if placement is not None else spec_target(spec)
    image = serving_image(spec, opts)
    security = container_security()
    volumes, mount, init = model_volume(spec, variant.model or spec.model, opts)
    secret_volumes, secret_mounts = _secret_volumes(spec)
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "command": ["model-server"],
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}],
        "env": _env(spec, variant),
        "resources": _resources(spec, target),
        "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "podinfo", "mountPath": PODINFO_DIR, "readOnly": True},
                         *secret_mounts],
        **probes(spec),
        "securityContext": security,
        # a failed load exits 4 with the error in /dev/termination-log (status.py reads it)
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    # spec.traffic, not the effective weight: see the module docstring.
    serving = "true" if spec.traffic.get(variant.name, 0) > 0 else "false"
    template_labels = {**labels(spec.name, variant.name), LABEL_SERVING: serving}
    template_meta: dict[str, Any] = {"labels": template_labels}
    if scrape_annotations:
        template_meta["annotations"] = {
            "prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP_PORT),
            "prometheus.io/path": "/metrics"}
        if spec.tls_secret:
            template_meta["annotations"]["prometheus.io/scheme"] = "https"
    pod: dict[str, Any] = {
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}, PODINFO_VOLUME,
                    *secret_volumes],
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False,
    }
    if init:
        pod["initContainers"] = init
    if spec.gpu and target is not None:
        pod["tolerations"] = tolerations(spec)
        affinity = target.node_affinity()
        if affinity is not None:
            pod["affinity"] = {"nodeAffinity": affinity}
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": {LABEL_MODELSERVICE: spec.name, LABEL_VARIANT: variant.name}},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": template_meta, "spec": pod},
    }
    if replicas is not None:
        dep_spec["replicas"] = replicas
    metadata = _metadata(ms, name, variant.name)
    if placement is not None:
        metadata["annotations"] = {PLACEMENT_ANNOTATION: placement.inputs}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
            "spec": dep_spec}


def build_variant_service(ms: Mapping[str, Any], spec: ModelServiceSpec,
                          variant: Variant) -> dict[str, Any]:
    name = object_name(spec.name, variant.name)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(ms, name, variant.name),
            "spec": {"type": "ClusterIP",
                     "selector": {LABEL_MODELSERVICE: spec.name, LABEL_VARIANT: variant.name},
                     "ports": _service_ports()}}


def variant_services(spec: ModelServiceSpec) -> bool:
    """Whether each variant gets its own Service ``<name>-<variant>``: only with two or more
    variants (traffic split, mirroring, HTTPRoute backends, addressing one variant). With one
    variant the stable Service ``<name>`` selects exactly its pods, and a second Service would
    only double the API server's work (a ClusterIP, Endpoints, EndpointSlices and their
    updates: measured 21.9 vs 38.2 ModelServices/s created at 1,000)."""
    return len(spec.variants) > 1


def build_stable_service(ms: Mapping[str, Any], spec: ModelServiceSpec) -> dict[str, Any]:
    # With one variant the stable Service is that variant's Service: it carries the variant
    # label, so the ServiceMonitor (which selects Services with a variant label) scrapes
    # every pod exactly once either way.
    only = None if variant_services(spec) else spec.variants[0].name
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(ms, object_name(spec.name), only),
            "spec": {"type": "ClusterIP",
                     "selector": {LABEL_MODELSERVICE: spec.name, LABEL_SERVING: "true"},
                     "ports": _service_ports()}}


def build_hpa(ms: Mapping[str, Any], spec: ModelServiceSpec, variant: Variant,
              min_replicas: int | None = None) -> dict[str, Any]:
    """The variant's HPA; ``min_replicas`` overrides spec.autoscaling.minReplicas
    (``hpa_min_replicas``); never below 1 (a variant at zero is KEDA's, ``zero``)."""
    assert spec.autoscaling is not None
    a = spec.autoscaling
    name = object_name(spec.name, variant.name)
    metrics: list[dict[str, Any]] = []
    if a.target_cpu or not a.target_inflight:
        metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": a.target_cpu or 80}}})
    if a.target_inflight:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": INFLIGHT_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(a.target_inflight)}}})
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": max(1, a.min_replicas if min_replicas is None else min_replicas),
        "maxReplicas": a.max_replicas, "metrics": metrics,
    }
    if a.behavior:
        hpa_spec["behavior"] = dict(a.behavior)
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(ms, name, variant.name), "spec": hpa_spec}


def build_service_monitor(ms: Mapping[str, Any], spec: ModelServiceSpec) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _metadata(ms, object_name(spec.name)),
            "spec": {"selector": {"matchExpressions": [
                         {"key": LABEL_MODELSERVICE, "operator": "In", "values": [spec.name]},
                         {"key": LABEL_VARIANT, "operator": "Exists"}]},
                     "endpoints": [{"port": "http", "path": "/metrics",
                                    "interval": spec.scrape_interval, **_scrape_tls(spec),
                                    **_scrape_auth(spec)}]}}


def scrape_server_name(spec: ModelServiceSpec) -> str:
    """The name Prometheus verifies the pods' certificate for: the stable Service's
    ``<name>.<namespace>.svc``, which the certificate must carry as a DNS SAN (Prometheus
    scrapes pod IPs, which no certificate names)."""
    return f"{object_name(spec.name)}.{spec.namespace}.svc"


def _scrape_tls(spec: ModelServiceSpec) -> dict[str, Any]:
    """Scrape over HTTPS when the server serves TLS, verifying the certificate: the CA is
    ``ca.crt`` of the TLS Secret (as cert-manager writes it), the name scrape_server_name."""
    if not spec.tls_secret:
        return {}
    return {"scheme": "https", "tlsConfig": {
        "ca": {"secret": {"name": spec.tls_secret, "key": env.TLS_CA_KEY}},
        "serverName": scrape_server_name(spec)}}


def _scrape_auth(spec: ModelServiceSpec) -> dict[str, Any]:
    """With protectMetrics: present the token under metricsTokenKey of the token Secret."""
    if not (spec.auth_token_secret and spec.auth_protect_metrics):
        return {}
    return {"authorization": {"type": "Bearer", "credentials": {
        "name": spec.auth_token_secret, "key": spec.auth_metrics_token_key}}}


def route_retry(spec: ModelServiceSpec, opts: BuildOptions) -> dict[str, Any] | None:
    """Each HTTPRoute rule's ``retry`` (Gateway API, experimental channel): spec.gateway.retry,
    or None when ``attempts`` is 0 or the cluster's HTTPRoute CRD has no such field (the
    reconciler then reports ``spec.gateway.retry`` in FieldsIgnored: written anyway, the API
    server would drop it and every pass would find the route drifted)."""
    r = spec.gateway_retry
    if r.attempts == 0 or not opts.gateway_retry:
        return None
    out: dict[str, Any] = {"attempts": r.attempts}
    if r.codes:
        out["codes"] = list(r.codes)
    if r.backoff:
        out["backoff"] = r.backoff
    return out


def _every_path() -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": "/"}}


def route_service(spec: ModelServiceSpec, variant: str) -> str:
    """The Service the HTTPRoute sends ``variant``'s requests to: its own, or with one variant
    the stable Service (``variant_services``)."""
    return object_name(spec.name, variant if variant_services(spec) else None)


def route_services(spec: ModelServiceSpec) -> list[str]:
    """Every Service the HTTPRoute's backendRefs name, in spec.variants order, once each."""
    return list(dict.fromkeys(route_service(spec, v.name) for v in spec.variants))


RETRY_BUDGET_POLICY = ("gateway.networking.x-k8s.io/v1alpha1", "XBackendTrafficPolicy")
"""(apiVersion, kind) of Gateway API's retry budget (GEP-3388, experimental)."""
POLICY_TARGETS_MAX = 16
"""An XBackendTrafficPolicy's targetRefs hold at most this many Services."""


def retry_budget_wanted(spec: ModelServiceSpec, opts: BuildOptions) -> bool:
    """Whether the ModelService gets an XBackendTrafficPolicy: it has an HTTPRoute, its
    retries are on (``attempts`` above 0; the budget then always is, by default Gateway API's)
    and the cluster serves the kind."""
    return (opts.gateway_api and bool(spec.gateway_parents) and opts.retry_budget
            and spec.gateway_retry.attempts > 0)


def build_retry_budget(ms: Mapping[str, Any], spec: ModelServiceSpec) -> dict[str, Any]:
    """The XBackendTrafficPolicy ``<name>``: spec.gateway.retry.budget as the
    ``retryConstraint`` of every Service the HTTPRoute names (``route_services``; the first
    ``POLICY_TARGETS_MAX``, the reconciler names the rest in FieldsIgnored). Gateway API keeps
    a budget per targeted backend, so a failing variant spends its own and no other's."""
    b = spec.gateway_retry.budget
    targets = [{"group": "", "kind": "Service", "name": name}
               for name in route_services(spec)[:POLICY_TARGETS_MAX]]
    api_version, kind = RETRY_BUDGET_POLICY
    return {"apiVersion": api_version, "kind": kind,
            "metadata": _metadata(ms, object_name(spec.name)),
            "spec": {"targetRefs": targets, "retryConstraint": {
                "budget": {"percent": b.percent, "interval": b.interval},
                "minRetryRate": {"count": b.min_retry_rate.count,
                                 "interval": b.min_retry_rate.interval}}}}


def build_http_route(ms: Mapping[str, Any], spec: ModelServiceSpec,
                     weights: Mapping[str, int], opts: BuildOptions) -> dict[str, Any]:
    """The HTTPRoute ``<name>``: its last rule sends every request to one backend per variant
    weighted by the effective ``weights`` (every variant is listed, a variant at 0 with weight
    0, so the backends stay the same through a rollout or a brownout and only the weights
    move; with one variant, the stable Service at 100). With spec.gateway.variantHeader, one
    rule per variant before it sends requests whose header names the variant (Exact) to that
    variant's own Service; a header naming no variant matches none of them and takes the
    weighted rule. Every rule carries the same ``retry`` (``route_retry``)."""
    if variant_services(spec):
        backends = [{"name": route_service(spec, v.name), "port": 80,
                     "weight": int(weights.get(v.name, 0))} for v in spec.variants]
    else:
        only = spec.variants[0].name
        backends = [{"name": route_service(spec, only), "port": 80,
                     "weight": int(weights.get(only, 100))}]
    rules: list[dict[str, Any]] = []
    if spec.variant_header:
        rules += [{"matches": [{**_every_path(), "headers": [
                       {"type": "Exact", "name": spec.variant_header, "value": v.name}]}],
                   "backendRefs": [{"name": route_service(spec, v.name), "port": 80}]}
                  for v in spec.variants]
    rules.append({"matches": [_every_path()], "backendRefs": backends})
    for rule in rules:
        retry = route_retry(spec, opts)
        if retry is not None:
            rule["retry"] = retry
    route: dict[str, Any] = {"parentRefs": [dict(p) for p in spec.gateway_parents],
                             "rules": rules}
    if spec.hostnames:
        route["hostnames"] = list(spec.hostnames)
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _metadata(ms, object_name(spec.name)), "spec": route}


def spec_serving(spec: ModelServiceSpec) -> Serving:
    """spec.traffic as effective weights (no rollout state, no mirror)."""
    return Serving(spec_weights(spec))


@dataclass(frozen=True)
class PodMarks:
    """What a variant's running pods carry, set on the live pods by the reconciler and never
    in their template (so a change restarts nothing): the ``serving`` label from the
    effective weight, and on the stable variants during a rollout the mirror annotation."""

    serving: str
    mirror: str | None = None


def pod_marks(spec: ModelServiceSpec, serving: Serving) -> dict[str, PodMarks]:
    """Every variant's PodMarks for the effective weights and mirror in ``serving``."""
    stable = set(spec.stable_variants)
    mirror = serving.mirror
    return {v.name: PodMarks(
        "true" if serving.weights.get(v.name, 0) > 0 else "false",
        mirror_annotation(mirror) if mirror is not None and v.name in stable
        and mirror.variant != v.name else None) for v in spec.variants}


def build_all(ms: Mapping[str, Any], opts: BuildOptions, spec: ModelServiceSpec | None = None,
              serving: Serving | None = None,
              gpu: Mapping[str, GpuPlacement] | None = None,
              withheld: Collection[str] = (), scale: zero.Plan | None = None,
              ability: zero.Ability | None = None) -> list[dict[str, Any]]:
    """Every object `ms` needs, in apply order. ``spec`` is the parsed spec (parsed here when
    not given; raises InvalidSpecError for a bad one, NoServingImage for one no configured
    image serves); ``serving`` the effective weights
    (spec.traffic when not given); ``gpu`` each GPU variant's placement (spec.gpu as written
    for a variant without one); ``withheld`` the variants that get no Deployment and no HPA
    (the GPU fit refused them); ``scale`` the scale-to-zero plan of this pass
    (``zero.plan``; its variants get a KEDA ScaledObject instead of an HPA, built with
    ``ability``)."""
    spec = spec if spec is not None else parse_spec(ms)
    serving_image(spec, opts)  # refuses (NoServingImage) before any object is built
    serving = serving if serving is not None else spec_serving(spec)
    weights = serving.weights
    service_monitor = opts.service_monitor and spec.service_monitor != "disabled"
    scrape_annotations = not service_monitor and spec.service_monitor != "disabled"
    replicas = variant_replicas(spec, weights, serving.routed)
    hpa_min = hpa_min_replicas(spec, serving) if spec.autoscaling else {}
    if scale is not None:
        hpa_min = {**hpa_min, **scale.floor}
    keda = scale.keda if scale is not None and ability is not None else {}
    # The stable Service first: when a second variant is added it drops the variant label
    # before the per-variant Services appear, so no pod is ever selected twice for scraping.
    out: list[dict[str, Any]] = [build_stable_service(ms, spec)]
    for variant in spec.variants:
        served = variant.name not in withheld
        if served:
            out.append(build_deployment(
                ms, spec, variant, opts,
                None if spec.autoscaling else replicas[variant.name], scrape_annotations,
                (gpu or {}).get(variant.name)))
        if variant_services(spec):
            out.append(build_variant_service(ms, spec, variant))
        if spec.autoscaling and served and variant.name in keda:
            assert scale is not None and ability is not None
            out.append(zero.build_scaled_object(
                _metadata(ms, object_name(spec.name, variant.name), variant.name), spec,
                variant.name, object_name(spec.name, variant.name), ability,
                keda[variant.name], scale.paused.get(variant.name)))
        elif spec.autoscaling and served:
            out.append(build_hpa(ms, spec, variant, max(1, hpa_min[variant.name])))
    if service_monitor:
        out.append(build_service_monitor(ms, spec))
    if retry_budget_wanted(spec, opts):  # before the route: its retries start capped
        out.append(build_retry_budget(ms, spec))
    if opts.gateway_api and spec.gateway_parents:
        out.append(build_http_route(ms, spec, weights, opts))
    return out
