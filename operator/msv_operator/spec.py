"""Typed view of a ModelService spec, and the checks the CRD schema cannot express.

The CRD (crds/) rejects most bad input at admission with CEL rules. `parse_spec` is the
second line of defence and the place for rules that need more than one object's worth of
context: anything it rejects becomes an `InvalidSpec` condition with the message of
`InvalidSpecError`, naming the field. Pure: no I/O, no Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from msv_contract import capabilities as caps
from msv_contract import env, pipeline
from msv_contract.pipeline import Student

FRAMEWORKS = caps.FRAMEWORK_NAMES
TASKS = caps.TASKS
QUANTIZATIONS = caps.QUANTIZATION_NAMES
PRUNING_METHODS = caps.PRUNING_METHODS
URI_SCHEMES = ("pvc", "file", "http", "https", "s3")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_NAME = 63
HEADER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""``spec.gateway.variantHeader``: a lower-case HTTP header name (the CRD's CEL rule says the
same)."""
HEADER_NAME_MAX = 64
RESERVED_HEADERS = ("authorization", "connection", "content-length", "content-type", "cookie",
                    "host", "keep-alive", "proxy-authorization", "te", "trailer",
                    "transfer-encoding", "upgrade")
"""Headers with a meaning of their own in every request: never a variant selector (the CRD
lists the same)."""


class InvalidSpecError(ValueError):
    """The spec cannot be served as written; the message names the field and the fix."""

    reason = "InvalidSpec"
    """The reason of the ``Ready=False`` condition (a subclass may say more precisely)."""


@dataclass(frozen=True)
class ModelSource:
    uri: str
    sha256: str | None = None
    credentials_secret: str | None = None
    """The Secret the pull reads for this source (None: spec.model.credentialsSecret)."""

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]


IDLE_AFTER_DEFAULT = "5m"
"""``spec.autoscaling.idleAfter``: how long a variant that may scale to zero must see no
request before its last pod goes (KEDA's cooldownPeriod)."""
IDLE_AFTER_RANGE = ("30s", "24h")
"""Least and most ``idleAfter``."""


@dataclass(frozen=True)
class VariantAutoscaling:
    """``spec.variants[].autoscaling``: overrides of spec.autoscaling for one variant (None:
    spec.autoscaling's)."""

    min_replicas: int | None = None
    idle_seconds: float | None = None


_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    m = _DURATION.match(text)
    assert m is not None, text
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


RECIPES = caps.RECIPE_NAMES
SHA256 = re.compile(r"^[0-9a-f]{64}$")
BUILD_DEFAULTS: Mapping[str, Any] = {"deadline": "2h", "pruningAmount": 0.3}
"""``spec.variants[].build``: the Job's deadline, and the share of FFN neurons prune-recover
removes."""
BUILD_DEADLINE_RANGE = ("1m", "168h")
BUILD_OUTPUT_SCHEMES = ("s3", "pvc")
"""``spec.variants[].build.output.uri``: an S3 prefix (the operator reads its MANIFEST), or a
directory on a PersistentVolumeClaim the Job mounts read-write (the operator records what the
Job reports; docs/optimization.md)."""
BUILD_GATE_DEFAULTS: Mapping[str, Any] = {"minAgreement": 0.99, "maxLatencyRatio": 1.0}
"""``spec.variants[].build.gates``: what the offline report must show for ``readyToRollOut``."""


@dataclass(frozen=True)
class Build:
    """How a variant's model is produced from spec.model by a Job (``variants[].build``,
    docs/optimization.md)."""

    recipe: str
    data: ModelSource
    """The data set (its sha256 is required: the artifact key hashes it)."""
    data_labels: bool
    output: str
    """``s3://bucket/prefix/`` or ``pvc://claim/prefix/`` the artifact is published under
    (``<output>/<key>/``; always ends with ``/``)."""
    output_secret: str | None
    steps: int | None = None
    epochs: int | None = None
    max_time_seconds: float | None = None
    pruning_amount: float | None = None
    pruning_ranking: str | None = None
    """``pruning.ranking`` (prune-recover): one of ``pipeline.RANKINGS``, the default applied."""
    student: Student | None = None
    input_range: tuple[float, float] | None = None
    """``data.inputRange`` (framework tensorflow): what image pixels 0..255 become."""
    resources: Mapping[str, Any] = field(default_factory=dict)
    deadline_seconds: int = int(_seconds(BUILD_DEFAULTS["deadline"]))
    min_agreement: float = BUILD_GATE_DEFAULTS["minAgreement"]
    max_latency_ratio: float = BUILD_GATE_DEFAULTS["maxLatencyRatio"]
    auto_rollout: bool = False


@dataclass(frozen=True)
class Variant:
    name: str
    model: ModelSource | None = None
    quantization: str = "none"
    pruning_method: str = "none"
    pruning_amount: float = 0.0
    replicas: int | None = None
    build: Build | None = None
    """The variant's model is produced by a Job (``model`` is then the artifact, once built)."""
    autoscaling: VariantAutoscaling | None = None
    """``spec.variants[].autoscaling``: this variant's own floor and idle period (over
    spec.autoscaling's)."""


@dataclass(frozen=True)
class Gpu:
    count: int = 1
    resource_name: str | None = None
    """``spec.gpu.resourceName``; None: the operator chooses (GPU fit), else whole GPUs."""
    products: tuple[str, ...] = ()
    tolerations: tuple[Mapping[str, Any], ...] = ()


# Defaults of the optional fields, by their CRD name: the parser and the dataclasses below
# read these, and tests/unit/test_contract.py holds the CRD's descriptions ("Default ...")
# equal to them.
ROLLOUT_DEFAULTS: Mapping[str, Any] = {
    "steps": (10, 25, 50, 100), "stepDuration": "1m", "minRequests": 50}
"""``spec.rollout``."""
ANALYSIS_DEFAULTS: Mapping[str, Any] = {
    "interval": "15s", "window": "1m", "maxLatencyRatio": 1.2, "maxErrorRate": 0.01,
    "minAgreement": 0.99, "agreementConfidence": 0.95, "mirrorPercent": 10, "failureLimit": 2}
"""``spec.rollout.analysis``."""
AGREEMENT_CONFIDENCE_RANGE = (0.8, 0.999)
"""``spec.rollout.analysis.agreementConfidence``: the allowed confidence levels (inclusive)."""
GATEWAY_RETRY_DEFAULTS: Mapping[str, Any] = {"attempts": 2, "codes": (503,)}
"""``spec.gateway.retry`` (``backoff``: none unless set, the gateway's own; ``budget``: the
defaults below)."""
RETRY_MAX_ATTEMPTS = 5
GATEWAY_DURATION = re.compile(r"^[0-9]{1,5}(ms|s|m|h)$")
"""A duration Gateway API accepts (its pattern allows up to four such parts; one is enough)."""
RETRY_BUDGET_DEFAULTS: Mapping[str, Any] = {"percent": 20, "interval": "10s"}
"""``spec.gateway.retry.budget`` (Gateway API's own for XBackendTrafficPolicy's
``retryConstraint.budget``, GEP-3388)."""
MIN_RETRY_RATE_DEFAULTS: Mapping[str, Any] = {"count": 10, "interval": "1s"}
"""``spec.gateway.retry.budget.minRetryRate`` (Gateway API's own)."""
RETRY_BUDGET_INTERVAL = ("1s", "1h")
"""Least and most ``spec.gateway.retry.budget.interval`` (Gateway API's bounds)."""
MIN_RETRY_RATE_INTERVAL_MAX = "1h"
"""Most ``spec.gateway.retry.budget.minRetryRate.interval`` (above zero; Gateway API's)."""
MIN_RETRY_RATE_COUNT_MAX = 1_000_000
"""Most ``spec.gateway.retry.budget.minRetryRate.count`` (at least 1; Gateway API's)."""
STARTUP_TIMEOUT_DEFAULT = "30m"
"""``spec.server.startupTimeout``: how long a pod's server may take from its start to ready
(the model's load) before the kubelet restarts it (the startup probe's failure budget)."""
STARTUP_TIMEOUT_RANGE = ("10s", "24h")
"""Least and most ``spec.server.startupTimeout``."""
BROWNOUT_DEFAULTS: Mapping[str, Any] = {
    "maxShare": 50, "engageAfter": "1m", "releaseAfter": "2m", "releaseBelow": 0.8,
    "interval": "15s", "window": "30s"}
"""``spec.autoscaling.brownout``."""


@dataclass(frozen=True)
class Brownout:
    """Load-adaptive precision (``spec.autoscaling.brownout``): while the stable variant is at
    maxReplicas and its p95 stays above ``objective_ms`` for ``engage_seconds``, up to
    ``max_share`` percent of the traffic goes to the cheaper ``variant``; it comes back after
    ``release_seconds`` with the p95 below ``release_below`` x the objective. Without
    ``variant`` the operator chooses one of ``candidates`` each time it engages
    (``brownout.choose``)."""

    variant: str | None
    """The variant the spec names; None: the operator chooses among ``candidates``."""
    objective_ms: float
    max_share: int = BROWNOUT_DEFAULTS["maxShare"]
    step: int | None = None
    """Percent added per ``engage_seconds`` of continued overload, up to max_share; None: the
    whole max_share at once."""
    engage_seconds: float = _seconds(BROWNOUT_DEFAULTS["engageAfter"])
    release_seconds: float = _seconds(BROWNOUT_DEFAULTS["releaseAfter"])
    release_below: float = BROWNOUT_DEFAULTS["releaseBelow"]
    interval_seconds: float = _seconds(BROWNOUT_DEFAULTS["interval"])
    """How often the stable variant's p95 is measured while brownout is configured."""
    window_seconds: float = _seconds(BROWNOUT_DEFAULTS["window"])
    """PromQL range of that measurement."""
    candidates: tuple[str, ...] = ()
    """Without ``variant``: the variants the operator chooses among, in the order listed
    (``spec.autoscaling.brownout.candidates``, else every variant but the stable ones in
    spec.variants' order); () with ``variant``."""
    min_agreement: float | None = None
    """Without ``variant``: a candidate needs a measured agreement at least this high to be
    chosen; None: no floor."""


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 1
    max_replicas: int = 4
    target_cpu: int | None = None
    target_inflight: int | None = None
    behavior: Mapping[str, Any] | None = None
    brownout: Brownout | None = None
    idle_seconds: float = field(default_factory=lambda: parse_idle_after(None, ""))
    """``spec.autoscaling.idleAfter`` in seconds (``IDLE_AFTER_DEFAULT``)."""


@dataclass(frozen=True)
class Analysis:
    """The gates of a rollout and how often they are measured (``spec.rollout.analysis``)."""

    interval_seconds: float = _seconds(ANALYSIS_DEFAULTS["interval"])
    window_seconds: float = _seconds(ANALYSIS_DEFAULTS["window"])
    max_latency_ratio: float = ANALYSIS_DEFAULTS["maxLatencyRatio"]
    """Candidate p95 / stable p95 must stay at or below this."""
    max_error_rate: float = ANALYSIS_DEFAULTS["maxErrorRate"]
    """Share of the candidate's requests answered 5xx must stay at or below this."""
    min_agreement: float | None = ANALYSIS_DEFAULTS["minAgreement"]
    """Share of mirrored comparisons the candidate answers like the stable variant, as the low
    bound of a confidence interval must show it (below 1: no finite sample shows 1); None: no
    gate."""
    agreement_confidence: float = ANALYSIS_DEFAULTS["agreementConfidence"]
    """Confidence level of the agreement gate's interval (``confidence.wilson``)."""
    mirror_percent: int = ANALYSIS_DEFAULTS["mirrorPercent"]
    failure_limit: int = ANALYSIS_DEFAULTS["failureLimit"]
    """Failed analyses tolerated; one more rolls the candidate back (Argo Rollouts' meaning)."""


@dataclass(frozen=True)
class Rollout:
    """A progressive, quality-gated rollout of ``candidate`` (``spec.rollout``)."""

    candidate: str
    steps: tuple[int, ...] = ROLLOUT_DEFAULTS["steps"]
    step_seconds: float = _seconds(ROLLOUT_DEFAULTS["stepDuration"])
    min_requests: int = ROLLOUT_DEFAULTS["minRequests"]
    analysis: Analysis = field(default_factory=Analysis)


@dataclass(frozen=True)
class RetryRate:
    """Retries a backend may always get, whatever its budget: ``count`` per ``interval``
    (``spec.gateway.retry.budget.minRetryRate``), so a variant with little traffic can still
    retry."""

    count: int = MIN_RETRY_RATE_DEFAULTS["count"]
    interval: str = MIN_RETRY_RATE_DEFAULTS["interval"]
    """As Gateway API writes durations (``1s``)."""


@dataclass(frozen=True)
class RetryBudget:
    """The gateway's retries across the requests to one backend (``spec.gateway.retry.budget``;
    Gateway API's XBackendTrafficPolicy ``retryConstraint``, GEP-3388): retries may be at most
    ``percent`` of the backend's active requests over ``interval``, or ``min_retry_rate`` when
    that allows more; a retry beyond it is not sent and the client gets 503."""

    percent: int = RETRY_BUDGET_DEFAULTS["percent"]
    interval: str = RETRY_BUDGET_DEFAULTS["interval"]
    """As Gateway API writes durations (``10s``)."""
    min_retry_rate: RetryRate = field(default_factory=RetryRate)
    explicit: bool = False
    """The spec sets ``spec.gateway.retry.budget`` (only then is a cluster that cannot enforce
    it reported in FieldsIgnored; the defaults apply silently where they can)."""


@dataclass(frozen=True)
class Retry:
    """The gateway's retries of one request (``spec.gateway.retry``; the HTTPRoute rules'
    ``retry``): up to ``attempts`` more tries after a connection failure or an answer in
    ``codes``, within ``budget`` across requests; ``attempts`` 0 switches them off (and with
    them the budget)."""

    attempts: int = GATEWAY_RETRY_DEFAULTS["attempts"]
    codes: tuple[int, ...] = GATEWAY_RETRY_DEFAULTS["codes"]
    backoff: str | None = None
    """Least wait between tries, as Gateway API writes durations (``100ms``); None: the
    implementation's."""
    budget: RetryBudget = field(default_factory=RetryBudget)


@dataclass(frozen=True)
class ModelServiceSpec:
    name: str
    namespace: str
    model: ModelSource
    framework: str
    task: str | None
    variants: tuple[Variant, ...]
    traffic: Mapping[str, int]
    """Variant name -> weight (percent); sums to 100."""
    replicas: int = 1
    gpu: Gpu | None = None
    autoscaling: Autoscaling | None = None
    image: str | None = None
    image_pull_policy: str | None = None
    max_batch_size: int = 8
    max_delay_ms: int = 2
    torch_threads: int | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    credentials_secret: str | None = None
    service_monitor: str = "auto"
    scrape_interval: str = "15s"
    gateway_parents: tuple[Mapping[str, Any], ...] = ()
    hostnames: tuple[str, ...] = ()
    gateway_retry: Retry = field(default_factory=Retry)
    """``spec.gateway.retry`` (on by default: it only acts with spec.gateway)."""
    variant_header: str | None = None
    """``spec.gateway.variantHeader``: requests carrying it with a variant's name reach that
    variant (None: off)."""
    auth_token_secret: str | None = None
    """Secret whose keys are bearer tokens (mounted; the operator never reads it)."""
    auth_protect_metrics: bool = False
    auth_metrics_token_key: str = env.METRICS_TOKEN_KEY
    """The token Secret's key Prometheus presents on /metrics (with auth_protect_metrics)."""
    tls_secret: str | None = None
    """kubernetes.io/tls Secret (tls.crt, tls.key) for REST and gRPC (mounted, never read)."""
    rollout: Rollout | None = None
    startup_timeout_seconds: float = field(default_factory=lambda: parse_startup_timeout(None))
    """``spec.server.startupTimeout`` (``STARTUP_TIMEOUT_DEFAULT``) in seconds."""
    prewarm: bool = False
    """``spec.model.prewarm``: fill the node-local model cache of every node the variants may
    run on ahead of time (``prewarm``; docs/model-cache.md, "Pre-warming")."""

    @property
    def stable_variants(self) -> tuple[str, ...]:
        """Variants with weight above zero in spec.traffic (the ones a rollout moves from)."""
        return tuple(v for v, w in self.traffic.items() if w > 0)

    @property
    def stable(self) -> str:
        """The stable variant: the one with the most weight in spec.traffic (the first of
        equals)."""
        return stable_of(self.traffic)

    def min_replicas(self, variant: str) -> int | None:
        """The variant's autoscaling floor (its own, else spec.autoscaling's); None without
        spec.autoscaling."""
        if self.autoscaling is None:
            return None
        own = next((v.autoscaling for v in self.variants if v.name == variant), None)
        if own is not None and own.min_replicas is not None:
            return own.min_replicas
        return self.autoscaling.min_replicas

    def idle_seconds(self, variant: str) -> float:
        """The variant's idle period before it goes to zero (its own, else
        spec.autoscaling.idleAfter)."""
        own = next((v.autoscaling for v in self.variants if v.name == variant), None)
        if own is not None and own.idle_seconds is not None:
            return own.idle_seconds
        return self.autoscaling.idle_seconds if self.autoscaling else parse_idle_after(None, "")

    @property
    def may_scale_to_zero(self) -> tuple[str, ...]:
        """The variants whose autoscaling floor is 0, in spec.variants order."""
        return tuple(v.name for v in self.variants if self.min_replicas(v.name) == 0)


def stable_of(traffic: Mapping[str, int]) -> str:
    """The variant with the most weight (the first listed among equals)."""
    return max(traffic, key=lambda v: traffic[v])


def _secret_name(section: Any, key: str, where: str, without: str) -> str | None:
    """The Secret that ``section[key]`` names; None when the section is absent. A section
    without a name, or with an empty one, is refused: it would serve ``without``."""
    if section is None:
        return None
    field_ = f"{where}.{key}"
    if not isinstance(section, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with {key}")
    value = section.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidSpecError(
            f"{field_}: {'missing' if value is None else 'empty'}; it must name a Secret (the "
            f"pods would otherwise serve {without}); remove {where} to serve {without}")
    if not isinstance(value, str) or len(value) > 253 or not DNS_SUBDOMAIN.match(value):
        raise InvalidSpecError(f"{field_}: {value!r} is not a valid Secret name")
    return value


def _secret_key(value: Any, where: str) -> str:
    if value is None:
        return env.METRICS_TOKEN_KEY
    if not isinstance(value, str) or len(value) > 253 or not SECRET_KEY.match(value):
        raise InvalidSpecError(
            f"{where}: {value!r} is not a valid Secret key (letters, digits, '-', '_', '.')")
    return value


def _check_uri(uri: Any, where: str) -> str:
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidSpecError(f"{where}: expected a URI such as pvc://claim/path, got {uri!r}")
    scheme = uri.split("://", 1)[0]
    if scheme not in URI_SCHEMES:
        raise InvalidSpecError(
            f"{where}: scheme {scheme!r} is not supported; use one of "
            + ", ".join(f"{s}://" for s in URI_SCHEMES)
        )
    parsed = urlparse(uri)
    if scheme in ("pvc", "s3", "http", "https") and not parsed.netloc:
        what = "claim" if scheme == "pvc" else "host or bucket"
        raise InvalidSpecError(f"{where}: {uri!r} names no {what}")
    if scheme == "pvc" and not DNS_LABEL.match(parsed.netloc):
        raise InvalidSpecError(
            f"{where}: {parsed.netloc!r} is not a valid PersistentVolumeClaim name")
    if scheme == "file" and not parsed.path.startswith("/"):
        raise InvalidSpecError(f"{where}: file:// URIs need an absolute path, e.g. file:///models/x")
    return uri


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(f"{where}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidSpecError(f"{where}: {value} is outside [{lo}, {hi}]")
    return value


def parse_duration(value: Any, where: str) -> float:
    """Seconds of a Go-style duration with one unit (``15s``, ``1m``, ``500ms``, ``1h``)."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidSpecError(f"{where}: {value!r} is not a duration such as 15s, 1m or 1h")
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise InvalidSpecError(f"{where}: {value!r} must be longer than zero")
    return seconds


def _ratio(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSpecError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidSpecError(f"{where}: expected a number, got {value!r}") from None
    if not lo <= number <= hi:
        raise InvalidSpecError(f"{where}: {number} is outside [{lo}, {hi}]")
    return number


def _sha256(value: Any, where: str, why: str) -> str:
    if not isinstance(value, str) or not SHA256.match(value):
        raise InvalidSpecError(f"{where}: {'missing' if value is None else repr(value)}; a "
                               f"sha256 (64 lower-case hex digits) is required: {why}")
    return value


def _object(raw: Any, where: str, keys: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with {keys}")
    return raw


def parse_build(raw: Any, where: str, framework: str, task: str | None, source: ModelSource,
                has_model: bool) -> Build | None:
    """``spec.variants[i].build`` checked against the capability table (the CRD's CEL rules
    refuse most of it at admission); None when absent."""
    if raw is None:
        return None
    b = _object(raw, where, "recipe, data, budget, output")
    if has_model:
        raise InvalidSpecError(f"{where.rsplit('.', 1)[0]}.model: a variant with build serves "
                               "the artifact its Job produces; remove model or build")
    recipe = b.get("recipe")
    problem = caps.recipe_problem(framework, task, str(recipe))
    if problem is not None:
        raise InvalidSpecError(f"{where}.recipe: {problem}")
    if source.scheme not in ("http", "https", "s3", "pvc"):
        raise InvalidSpecError(f"spec.model.uri: a build pulls its source into the Job; "
                               f"{source.scheme}:// cannot be (use s3://, http(s):// or pvc://)")
    _sha256(source.sha256, "spec.model.sha256",
            f"the artifact of {where} is named by the source model's sha256")
    data = _object(b.get("data"), f"{where}.data", "uri, sha256")
    data_uri = _check_uri(data.get("uri"), f"{where}.data.uri")
    if data_uri.split("://", 1)[0] not in ("http", "https", "s3"):
        raise InvalidSpecError(f"{where}.data.uri: the Job pulls its data; use s3:// or "
                               "http(s)://")
    if not urlparse(data_uri).path.rstrip("/").rsplit("/", 1)[-1]:
        raise InvalidSpecError(f"{where}.data.uri: {data_uri!r} names no file (text lines, "
                               "or an archive of images)")
    data_sha = _sha256(data.get("sha256"), f"{where}.data.sha256",
                       "the artifact is named by the data's sha256")
    data_secret = _secret_name(data, "credentialsSecret", f"{where}.data",
                               "unsigned") if data.get("credentialsSecret") is not None else None
    labels = data.get("labels", False)
    if not isinstance(labels, bool):
        raise InvalidSpecError(f"{where}.data.labels: expected true or false")
    input_range: tuple[float, float] | None = None
    if data.get("inputRange") is not None:
        value = data["inputRange"]
        if caps.FRAMEWORKS[framework].tasks:  # a pipeline framework preprocesses itself
            tensor = [f.name for f in caps.FRAMEWORKS.values() if not f.tasks]
            raise InvalidSpecError(f"{where}.data.inputRange: applies to framework "
                                   f"{' or '.join(tensor)} only (a {framework} model's own "
                                   "preprocessor scales pixels)")
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                or not value[0] < value[1]):
            raise InvalidSpecError(f"{where}.data.inputRange: expected [low, high] with "
                                   f"low < high, not {value!r}")
        input_range = (float(value[0]), float(value[1]))
    budget = _object(b.get("budget"), f"{where}.budget", "steps or epochs, maxTime")
    steps = budget.get("steps")
    epochs = budget.get("epochs")
    if (steps is None) == (epochs is None):
        raise InvalidSpecError(f"{where}.budget: set exactly one of steps and epochs")
    max_time = budget.get("maxTime")
    output = _object(b.get("output"), f"{where}.output", "uri")
    out_uri = _check_uri(output.get("uri"), f"{where}.output.uri")
    out_scheme = out_uri.split("://", 1)[0]
    if out_scheme not in BUILD_OUTPUT_SCHEMES:
        raise InvalidSpecError(f"{where}.output.uri: {out_uri!r}: artifacts are published to "
                               "an s3://bucket/prefix/ or a pvc://claim/prefix/")
    if out_scheme == "pvc" and ".." in urlparse(out_uri).path.split("/"):
        raise InvalidSpecError(f"{where}.output.uri: {out_uri!r}: a '..' would leave the "
                               "volume; name a directory inside the claim")
    if out_scheme == "pvc" and output.get("credentialsSecret") is not None:
        raise InvalidSpecError(f"{where}.output.credentialsSecret: a pvc:// output is a volume "
                               "the Job mounts; it takes no credentials (remove the field)")
    out_secret = (_secret_name(output, "credentialsSecret", f"{where}.output", "unsigned")
                  if output.get("credentialsSecret") is not None else None)
    amount: float | None = None
    ranking: str | None = None
    if recipe == "prune-recover":
        pr = _object(b.get("pruning") or {}, f"{where}.pruning", "amount, ranking")
        amount = _ratio(pr.get("amount", BUILD_DEFAULTS["pruningAmount"]),
                        f"{where}.pruning.amount", 0.01,
                        pipeline.MAX_PRUNE_AMOUNT)
        ranking = pr.get("ranking", pipeline.DEFAULT_RANKING)
        if ranking not in pipeline.RANKINGS:
            raise InvalidSpecError(f"{where}.pruning.ranking: {ranking!r} is not one of "
                                   + ", ".join(pipeline.RANKINGS))
    elif b.get("pruning") is not None:
        raise InvalidSpecError(f"{where}.pruning: applies to recipe prune-recover only")
    student: Student | None = None
    if recipe == "distill":
        st = _object(b.get("student"), f"{where}.student",
                     "layers (and hiddenSize, intermediateSize, heads)")
        if st.get("layers") is None:
            raise InvalidSpecError(f"{where}.student.layers: required (the student's layers)")

        def size(key: str) -> int | None:
            return None if st.get(key) is None else _int(st[key], f"{where}.student.{key}",
                                                         1, 1 << 20)
        student = Student(_int(st["layers"], f"{where}.student.layers", 1, 1000),
                          size("hiddenSize"), size("intermediateSize"), size("heads"))
        if (student.hidden_size and student.heads
                and student.hidden_size % student.heads):
            raise InvalidSpecError(f"{where}.student.hiddenSize: {student.hidden_size} is not "
                                   f"a multiple of heads ({student.heads})")
    elif b.get("student") is not None:
        raise InvalidSpecError(f"{where}.student: applies to recipe distill only")
    gates = b.get("gates") or {}
    g = {**BUILD_GATE_DEFAULTS, **_object(gates, f"{where}.gates",
                                          "minAgreement, maxLatencyRatio")}
    deadline = parse_duration(b.get("deadline", BUILD_DEFAULTS["deadline"]),
                              f"{where}.deadline")
    lo, hi = (_seconds(v) for v in BUILD_DEADLINE_RANGE)
    if not lo <= deadline <= hi:
        raise InvalidSpecError(f"{where}.deadline: outside [{BUILD_DEADLINE_RANGE[0]}, "
                               f"{BUILD_DEADLINE_RANGE[1]}]")
    auto = b.get("autoRollout", False)
    if not isinstance(auto, bool):
        raise InvalidSpecError(f"{where}.autoRollout: expected true or false")
    resources = b.get("resources") or {}
    _object(resources, f"{where}.resources", "requests, limits")
    return Build(
        recipe=str(recipe), data=ModelSource(data_uri, data_sha, data_secret),
        data_labels=labels, output=out_uri.rstrip("/") + "/", output_secret=out_secret,
        steps=None if steps is None else _int(steps, f"{where}.budget.steps", 1, 10**7),
        epochs=None if epochs is None else _int(epochs, f"{where}.budget.epochs", 1, 1000),
        max_time_seconds=None if max_time is None else parse_duration(
            max_time, f"{where}.budget.maxTime"),
        pruning_amount=amount, pruning_ranking=ranking, student=student, input_range=input_range,
        resources=dict(resources),
        deadline_seconds=int(deadline),
        min_agreement=_ratio(g["minAgreement"], f"{where}.gates.minAgreement", 0.0, 1.0),
        max_latency_ratio=_ratio(g["maxLatencyRatio"], f"{where}.gates.maxLatencyRatio",
                                 0.01, 100.0),
        auto_rollout=auto)


def parse_rollout(raw: Any, variants: tuple[Variant, ...], traffic: Mapping[str, int]
                  ) -> Rollout | None:
    """``spec.rollout`` checked against the variants and the traffic (the CRD's CEL rules
    say the same at admission; these cover what CEL cannot, e.g. a missing traffic list)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpecError("spec.rollout: expected an object with at least a candidate")
    names = [v.name for v in variants]
    candidate = raw.get("candidate")
    if candidate not in names:
        raise InvalidSpecError(
            f"spec.rollout.candidate: {candidate!r} is not in spec.variants ({', '.join(names)})")
    if traffic.get(candidate, 0) > 0:
        raise InvalidSpecError(
            f"spec.rollout.candidate: {candidate!r} already has weight {traffic[candidate]} in "
            "spec.traffic; the candidate must have weight 0 (the stable variants keep the "
            "traffic until the rollout moves it)")
    raw_steps = raw.get("steps", list(ROLLOUT_DEFAULTS["steps"]))
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidSpecError("spec.rollout.steps: expected a non-empty list of weights")
    steps = tuple(_int(w, f"spec.rollout.steps[{i}]", 1, 100) for i, w in enumerate(raw_steps))
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise InvalidSpecError(
                f"spec.rollout.steps[{i}]: {steps[i]} is not above the previous step "
                f"{steps[i - 1]}; steps must be strictly increasing")
    a = raw.get("analysis") or {}
    if not isinstance(a, Mapping):
        raise InvalidSpecError("spec.rollout.analysis: expected an object")
    where = "spec.rollout.analysis"
    a = {**ANALYSIS_DEFAULTS, **a}
    min_agreement = a["minAgreement"]  # 0 (or null) switches the gate off
    analysis = Analysis(
        interval_seconds=parse_duration(a["interval"], f"{where}.interval"),
        window_seconds=parse_duration(a["window"], f"{where}.window"),
        max_latency_ratio=_ratio(a["maxLatencyRatio"], f"{where}.maxLatencyRatio",
                                 0.01, 1000.0),
        max_error_rate=_ratio(a["maxErrorRate"], f"{where}.maxErrorRate", 0.0, 1.0),
        min_agreement=None if min_agreement is None or min_agreement == 0 else _ratio(
            min_agreement, f"{where}.minAgreement", 0.0, 1.0),
        agreement_confidence=_ratio(a["agreementConfidence"], f"{where}.agreementConfidence",
                                    *AGREEMENT_CONFIDENCE_RANGE),
        mirror_percent=_int(a["mirrorPercent"], f"{where}.mirrorPercent", 0, 100),
        failure_limit=_int(a["failureLimit"], f"{where}.failureLimit", 0, 100),
    )
    if analysis.min_agreement == 1.0:
        raise InvalidSpecError(
            f"{where}.minAgreement: 1 cannot be shown by any number of mirrored requests (the "
            "gate passes when a confidence bound clears it, docs/rollouts.md); use a value "
            "below 1, such as 0.999")
    if analysis.min_agreement is not None and analysis.mirror_percent == 0:
        raise InvalidSpecError(
            f"{where}.mirrorPercent: the agreement gate needs mirrored requests; set "
            "mirrorPercent above 0 or minAgreement to 0")
    if analysis.min_agreement is not None and steps[0] >= 100:
        raise InvalidSpecError(
            f"spec.rollout.steps: the agreement gate needs a step below 100: the stable "
            f"variant mirrors its requests to the candidate only while it serves some (e.g. "
            f"steps [50, 100]), or set {where}.minAgreement to 0")
    r = {**ROLLOUT_DEFAULTS, **raw}
    return Rollout(
        candidate=str(candidate), steps=steps,
        step_seconds=parse_duration(r["stepDuration"], "spec.rollout.stepDuration"),
        min_requests=_int(r["minRequests"], "spec.rollout.minRequests", 0, 10**9),
        analysis=analysis,
    )


def parse_brownout(raw: Any, variants: tuple[Variant, ...], traffic: Mapping[str, int]
                   ) -> Brownout | None:
    """``spec.autoscaling.brownout`` checked against the variants and the traffic (the CRD's
    CEL rules say the same at admission)."""
    if raw is None:
        return None
    where = "spec.autoscaling.brownout"
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with at least latencyObjectiveMs")
    b = {**BROWNOUT_DEFAULTS, **raw}
    names = [v.name for v in variants]
    top = max(traffic.values())
    stable = [v for v in names if traffic.get(v, 0) >= top]
    variant = raw.get("variant")
    candidates: tuple[str, ...] = ()
    min_agreement = None
    if variant is not None:
        if variant not in names:
            raise InvalidSpecError(
                f"{where}.variant: {variant!r} is not in spec.variants ({', '.join(names)})")
        if variant in stable:
            raise InvalidSpecError(
                f"{where}.variant: {variant!r} is the stable variant (the most weight in "
                "spec.traffic); name a cheaper variant that brownout may shift traffic to")
        for key in ("candidates", "minAgreement"):
            if raw.get(key) is not None:
                raise InvalidSpecError(
                    f"{where}.{key}: applies only when the operator chooses the variant; "
                    f"remove {key}, or remove variant to let the operator choose")
        variant = str(variant)
    else:
        candidates = _brownout_candidates(raw.get("candidates"), names, stable,
                                          f"{where}.candidates")
        raw_floor = raw.get("minAgreement")
        if raw_floor is not None:
            floor = _ratio(raw_floor, f"{where}.minAgreement", 0.0, 1.0)
            min_agreement = floor or None  # 0: no floor
    if raw.get("latencyObjectiveMs") is None:
        raise InvalidSpecError(f"{where}.latencyObjectiveMs: required (the stable variant's "
                               "p95 objective in milliseconds)")
    return Brownout(
        variant=variant,
        objective_ms=_ratio(raw["latencyObjectiveMs"], f"{where}.latencyObjectiveMs",
                            0.001, 3_600_000.0),
        max_share=_int(b["maxShare"], f"{where}.maxShare", 1, 100),
        step=None if raw.get("step") is None else _int(raw["step"], f"{where}.step", 1, 100),
        engage_seconds=parse_duration(b["engageAfter"],
                                      f"{where}.engageAfter"),
        release_seconds=parse_duration(b["releaseAfter"],
                                       f"{where}.releaseAfter"),
        release_below=_ratio(b["releaseBelow"], f"{where}.releaseBelow", 0.05, 1.0),
        interval_seconds=parse_duration(b["interval"], f"{where}.interval"),
        window_seconds=parse_duration(b["window"], f"{where}.window"),
        candidates=candidates,
        min_agreement=min_agreement,
    )


def _brownout_candidates(raw: Any, names: list[str], stable: list[str], where: str
                         ) -> tuple[str, ...]:
    """The variants an operator-chosen brownout picks from: ``raw`` checked (listed, not
    stable, each once), or every variant that is not stable when ``raw`` is None."""
    if raw is None:
        found = tuple(v for v in names if v not in stable)
        if not found:
            raise InvalidSpecError(
                f"{where.rsplit('.', 1)[0]}.variant: omitted, so the operator chooses among the "
                "variants other than the stable one, and spec.variants has none; add a cheaper "
                "variant (with weight below the stable one's in spec.traffic)")
        return found
    if not isinstance(raw, list | tuple) or not raw:
        raise InvalidSpecError(f"{where}: expected a non-empty list of variant names; remove "
                               "it to let the operator choose among every non-stable variant")
    out: list[str] = []
    for i, name in enumerate(raw):
        if name not in names:
            raise InvalidSpecError(
                f"{where}[{i}]: {name!r} is not in spec.variants ({', '.join(names)})")
        if name in stable:
            raise InvalidSpecError(
                f"{where}[{i}]: {name!r} is the stable variant (the most weight in "
                "spec.traffic); list cheaper variants that brownout may shift traffic to")
        if name in out:
            raise InvalidSpecError(f"{where}[{i}]: {name!r} is listed twice")
        out.append(str(name))
    return tuple(out)


def gateway_duration(value: Any, where: str, least: str | None = None,
                     most: str | None = None) -> str:
    """``value`` if it is a duration Gateway API accepts (``GATEWAY_DURATION``), above zero and
    within [``least``, ``most``] when given; else InvalidSpecError naming ``where``."""
    seconds = parse_duration(value, where)
    if not GATEWAY_DURATION.match(value):
        raise InvalidSpecError(f"{where}: {value!r} has more than 5 digits")
    if (least is not None and seconds < _seconds(least)) or (
            most is not None and seconds > _seconds(most)):
        bounds = f"from {least} to {most}" if least is not None else f"above zero, at most {most}"
        raise InvalidSpecError(f"{where}: {value!r} is outside the bounds ({bounds})")
    return str(value)


def parse_retry_budget(raw: Any) -> RetryBudget:
    """``spec.gateway.retry.budget`` with Gateway API's defaults and bounds (the CRD says the
    same at admission); absent: the defaults, not ``explicit``."""
    where = "spec.gateway.retry.budget"
    if raw is None:
        return RetryBudget()
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with percent, interval, "
                               "minRetryRate")
    b = {**RETRY_BUDGET_DEFAULTS, **raw}
    raw_rate = raw.get("minRetryRate")
    if raw_rate is not None and not isinstance(raw_rate, Mapping):
        raise InvalidSpecError(f"{where}.minRetryRate: expected an object with count, interval")
    m = {**MIN_RETRY_RATE_DEFAULTS, **(raw_rate or {})}
    return RetryBudget(
        percent=_int(b["percent"], f"{where}.percent", 0, 100),
        interval=gateway_duration(b["interval"], f"{where}.interval", *RETRY_BUDGET_INTERVAL),
        min_retry_rate=RetryRate(
            count=_int(m["count"], f"{where}.minRetryRate.count", 1, MIN_RETRY_RATE_COUNT_MAX),
            interval=gateway_duration(m["interval"], f"{where}.minRetryRate.interval",
                                      most=MIN_RETRY_RATE_INTERVAL_MAX)),
        explicit=True,
    )


def parse_retry(raw: Any) -> Retry:
    """``spec.gateway.retry`` with its defaults (the CRD says the same at admission)."""
    where = "spec.gateway.retry"
    if raw is None:
        return Retry()
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with attempts, codes, backoff, "
                               "budget")
    r = {**GATEWAY_RETRY_DEFAULTS, **raw}
    attempts = _int(r["attempts"], f"{where}.attempts", 0, RETRY_MAX_ATTEMPTS)
    raw_codes = r["codes"]
    if not isinstance(raw_codes, list | tuple):
        raise InvalidSpecError(f"{where}.codes: expected a list of HTTP status codes 500..599")
    codes: list[int] = []
    for i, c in enumerate(raw_codes):
        code = _int(c, f"{where}.codes[{i}]", 500, 599)
        if code in codes:
            raise InvalidSpecError(f"{where}.codes[{i}]: {code} is listed twice")
        codes.append(code)
    backoff = r.get("backoff")
    if backoff is not None:
        backoff = gateway_duration(backoff, f"{where}.backoff")
    return Retry(attempts=attempts, codes=tuple(codes), backoff=backoff,
                 budget=parse_retry_budget(r.get("budget")))


def parse_variant_header(raw: Any) -> str | None:
    """``spec.gateway.variantHeader``: a lower-case header name no request uses otherwise."""
    where = "spec.gateway.variantHeader"
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > HEADER_NAME_MAX or not HEADER_NAME.match(raw):
        raise InvalidSpecError(
            f"{where}: {raw!r} is not a lower-case HTTP header name (a-z, 0-9 and '-', at most "
            f"{HEADER_NAME_MAX} characters), e.g. x-msv-variant")
    if raw in RESERVED_HEADERS:
        raise InvalidSpecError(
            f"{where}: {raw!r} has a meaning of its own in requests; name a header of your "
            "own, e.g. x-msv-variant")
    return raw


def parse_spec(body: Mapping[str, Any]) -> ModelServiceSpec:
    """Validate a whole ModelService object and return its typed spec."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpecError("spec: missing; a ModelService needs at least spec.model")
    model = spec.get("model")
    if not isinstance(model, Mapping):
        raise InvalidSpecError("spec.model: missing; set spec.model.uri and spec.model.framework")
    uri = _check_uri(model.get("uri"), "spec.model.uri")
    framework = model.get("framework")
    if framework not in FRAMEWORKS:
        raise InvalidSpecError(
            f"spec.model.framework: {framework!r} is not one of {', '.join(FRAMEWORKS)}"
        )
    task = model.get("task")
    if caps.FRAMEWORKS[framework].tasks and not task:
        raise InvalidSpecError(f"spec.model.task: required for framework {framework}")
    if task and task not in TASKS:
        raise InvalidSpecError(
            f"spec.model.task: {task!r} is not served by the model server; use one of "
            f"{', '.join(TASKS)}")

    raw_variants = spec.get("variants") or [{"name": "baseline"}]
    variants: list[Variant] = []
    seen: set[str] = set()
    for i, v in enumerate(raw_variants):
        where = f"spec.variants[{i}]"
        vname = v.get("name") if isinstance(v, Mapping) else None
        if not isinstance(vname, str) or not DNS_LABEL.match(vname):
            raise InvalidSpecError(f"{where}.name: {vname!r} is not a DNS label (a-z, 0-9, '-')")
        if vname in seen:
            raise InvalidSpecError(f"{where}.name: variant {vname!r} is listed twice")
        seen.add(vname)
        if len(name) + 1 + len(vname) > MAX_NAME:
            raise InvalidSpecError(
                f"{where}.name: {name}-{vname} is longer than {MAX_NAME} characters; "
                "shorten the ModelService or variant name"
            )
        vmodel = None
        if isinstance(v.get("model"), Mapping):
            vmodel = ModelSource(
                _check_uri(v["model"].get("uri"), f"{where}.model.uri"), v["model"].get("sha256")
            )
        opt = v.get("optimization") or {}
        quant = opt.get("quantization") or "none"
        if quant not in QUANTIZATIONS:
            raise InvalidSpecError(
                f"{where}.optimization.quantization: {quant!r} is not one of "
                + ", ".join(QUANTIZATIONS)
            )
        pruning = opt.get("pruning") or {}
        method = pruning.get("method") or "none"
        amount = float(pruning.get("amount") or 0.0)
        if pruning and method not in PRUNING_METHODS:
            raise InvalidSpecError(
                f"{where}.optimization.pruning.method: {method!r} is not one of "
                + ", ".join(PRUNING_METHODS)
            )
        if pruning and not 0.0 <= amount < 1.0:
            raise InvalidSpecError(
                f"{where}.optimization.pruning.amount: {amount} is outside [0, 1)")
        if not caps.supports(framework, quant, method):
            raise InvalidSpecError(
                f"{where}.optimization: {caps.FRAMEWORKS[framework].unsupported_optimization}")
        replicas = v.get("replicas")
        build = parse_build(v.get("build"), f"{where}.build", str(framework), task,
                            ModelSource(uri, model.get("sha256")), vmodel is not None)
        variants.append(Variant(
            name=vname, model=vmodel, quantization=quant, pruning_method=method,
            pruning_amount=amount,
            replicas=None if replicas is None else _int(replicas, f"{where}.replicas", 0, 1000),
            build=build,
            autoscaling=parse_variant_autoscaling(v.get("autoscaling"), f"{where}.autoscaling",
                                                  spec.get("autoscaling")),
        ))

    raw_traffic = spec.get("traffic") or [{"variant": variants[0].name, "weight": 100}]
    traffic: dict[str, int] = {}
    for i, t in enumerate(raw_traffic):
        vname = t.get("variant")
        if vname not in seen:
            raise InvalidSpecError(
                f"spec.traffic[{i}].variant: {vname!r} is not in spec.variants "
                f"({', '.join(sorted(seen))})"
            )
        if vname in traffic:
            raise InvalidSpecError(f"spec.traffic[{i}].variant: {vname!r} is listed twice")
        traffic[vname] = _int(t.get("weight"), f"spec.traffic[{i}].weight", 0, 100)
    total = sum(traffic.values())
    if total != 100:
        raise InvalidSpecError(f"spec.traffic: weights sum to {total}, expected 100")

    gpu = None
    if isinstance(spec.get("gpu"), Mapping):
        g = spec["gpu"]
        gpu = Gpu(
            count=_int(g.get("count", 1), "spec.gpu.count", 1, 16),
            resource_name=str(g["resourceName"]) if g.get("resourceName") else None,
            products=tuple(g.get("products") or ()),
            tolerations=tuple(g.get("tolerations") or ()),
        )

    autoscaling = None
    if isinstance(spec.get("autoscaling"), Mapping):
        a = spec["autoscaling"]
        lo = _int(a.get("minReplicas", 1), "spec.autoscaling.minReplicas", 0, 1000)
        hi = _int(a.get("maxReplicas", 4), "spec.autoscaling.maxReplicas", 1, 1000)
        if lo > hi:
            raise InvalidSpecError(
                f"spec.autoscaling: minReplicas ({lo}) must not exceed maxReplicas ({hi})"
            )
        for i, v in enumerate(variants):
            own = v.autoscaling.min_replicas if v.autoscaling else None
            if own is not None and own > hi:
                raise InvalidSpecError(
                    f"spec.variants[{i}].autoscaling.minReplicas: {own} must not exceed "
                    f"spec.autoscaling.maxReplicas ({hi})")
        autoscaling = Autoscaling(
            min_replicas=lo, max_replicas=hi,
            target_cpu=a.get("targetCPUUtilization"), target_inflight=a.get("targetInFlight"),
            behavior=a.get("behavior"),
            brownout=parse_brownout(a.get("brownout"), tuple(variants), traffic),
            idle_seconds=parse_idle_after(a.get("idleAfter"), "spec.autoscaling.idleAfter"),
        )

    server = spec.get("server") or {}
    batching = server.get("batching") or {}
    auth = server.get("auth")
    tls = server.get("tls")
    monitoring = spec.get("monitoring") or {}
    gateway = spec.get("gateway") or {}
    if not isinstance(gateway, Mapping):
        raise InvalidSpecError("spec.gateway: expected an object with parentRefs")
    return ModelServiceSpec(
        name=name, namespace=namespace,
        model=ModelSource(uri, model.get("sha256")), framework=str(framework),
        task=task, variants=tuple(variants), traffic=traffic,
        replicas=_int(spec.get("replicas", 1), "spec.replicas", 0, 1000),
        gpu=gpu, autoscaling=autoscaling,
        image=server.get("image"), image_pull_policy=server.get("imagePullPolicy"),
        max_batch_size=_int(batching.get("maxBatchSize", 8),
                            "spec.server.batching.maxBatchSize", 1, 1024),
        max_delay_ms=_int(batching.get("maxDelayMs", 2),
                          "spec.server.batching.maxDelayMs", 0, 1000),
        torch_threads=server.get("torchThreads"),
        resources=server.get("resources") or {},
        credentials_secret=model.get("credentialsSecret"),
        service_monitor=str(monitoring.get("serviceMonitor") or "auto"),
        scrape_interval=str(monitoring.get("interval") or "15s"),
        gateway_parents=tuple(gateway.get("parentRefs") or ()),
        hostnames=tuple(gateway.get("hostnames") or ()),
        gateway_retry=parse_retry(gateway.get("retry")),
        variant_header=parse_variant_header(gateway.get("variantHeader")),
        auth_token_secret=_secret_name(auth, "tokenSecret", "spec.server.auth",
                                       "without authentication"),
        auth_protect_metrics=bool((auth or {}).get("protectMetrics", False)),
        auth_metrics_token_key=_secret_key((auth or {}).get("metricsTokenKey"),
                                           "spec.server.auth.metricsTokenKey"),
        tls_secret=_secret_name(tls, "secretName", "spec.server.tls", "without TLS"),
        rollout=parse_rollout(spec.get("rollout"), tuple(variants), traffic),
        startup_timeout_seconds=parse_startup_timeout(server.get("startupTimeout")),
        prewarm=_bool(model.get("prewarm", False), "spec.model.prewarm"),
    )


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpecError(f"{where}: {value!r} is not true or false")
    return value


def parse_idle_after(value: Any, where: str) -> float:
    """Seconds of an ``idleAfter`` (``IDLE_AFTER_DEFAULT`` when absent), within
    ``IDLE_AFTER_RANGE``."""
    if isinstance(value, str) and not GATEWAY_DURATION.match(value):  # the CRD's pattern
        raise InvalidSpecError(f"{where}: {value!r} is not a duration such as 5m (at most 5 "
                               "digits)")
    seconds = parse_duration(IDLE_AFTER_DEFAULT if value is None else value, where)
    lo, hi = (_seconds(v) for v in IDLE_AFTER_RANGE)
    if not lo <= seconds <= hi:
        raise InvalidSpecError(f"{where}: {value!r} is outside [{IDLE_AFTER_RANGE[0]}, "
                               f"{IDLE_AFTER_RANGE[1]}]")
    return seconds


def parse_variant_autoscaling(raw: Any, where: str, autoscaling: Any
                              ) -> VariantAutoscaling | None:
    """``spec.variants[].autoscaling``: ``minReplicas`` (0 lets the variant scale to zero) and
    ``idleAfter``; only with spec.autoscaling (the variant's maxReplicas and metric are its)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(f"{where}: expected an object with minReplicas, idleAfter")
    if not isinstance(autoscaling, Mapping):
        raise InvalidSpecError(
            f"{where}: needs spec.autoscaling (the variant's maxReplicas and scaling metric "
            "come from it); add spec.autoscaling or remove this")
    unknown = sorted(set(raw) - {"minReplicas", "idleAfter"})
    if unknown:
        raise InvalidSpecError(f"{where}.{unknown[0]}: unknown field (minReplicas, idleAfter)")
    lo = raw.get("minReplicas")
    idle = raw.get("idleAfter")
    return VariantAutoscaling(
        min_replicas=None if lo is None else _int(lo, f"{where}.minReplicas", 0, 1000),
        idle_seconds=None if idle is None else parse_idle_after(idle, f"{where}.idleAfter"))


def parse_startup_timeout(value: Any) -> float:
    """Seconds of ``spec.server.startupTimeout`` (``STARTUP_TIMEOUT_DEFAULT`` when absent),
    within ``STARTUP_TIMEOUT_RANGE``."""
    where = "spec.server.startupTimeout"
    if isinstance(value, str) and not GATEWAY_DURATION.match(value):  # the CRD's pattern
        raise InvalidSpecError(f"{where}: {value!r} is not a duration such as 30m (at most 5 "
                               "digits)")
    seconds = parse_duration(STARTUP_TIMEOUT_DEFAULT if value is None else value, where)
    lo, hi = (parse_duration(v, where) for v in STARTUP_TIMEOUT_RANGE)
    if not lo <= seconds <= hi:
        raise InvalidSpecError(f"{where}: {value!r} is outside [{STARTUP_TIMEOUT_RANGE[0]}, "
                               f"{STARTUP_TIMEOUT_RANGE[1]}]")
    return seconds
