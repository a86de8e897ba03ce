"""The typed ``status.rollout``, ``status.brownout`` and ``status.variants[]`` (pure: no I/O).

One dataclass per stored object, read with ``from_dict`` and written with ``to_dict`` under the
camelCase keys the status has always had: ``RolloutStatus`` (with its ``HistoryEntry``,
``Analysis``, ``Gate`` and ``Reference``), ``BrownoutStatus`` and ``VariantStatus``. The
rollout and brownout state machines (``rollout``, ``brownout``) work on these types; ``status``
writes the variant entries with ``VariantStatus`` and reads the rollout's and the brownout's
state for their conditions; ``kubectl_msv`` renders all three.

Why a module of its own rather than inside ``rollout`` or ``brownout``: each shape is read by
more than its writer (the brownout reads the rollout's phase, ``status`` and the kubectl
plugin read all three), so the types sit below every machine, import nothing of the
operator, and the whole stored schema is in one file.

``to_dict(from_dict(d)) == d`` for every stored status, old or partial:

* a key a type does not know goes to ``extra`` and is written back as it was (a field of an
  older or newer operator survives a pass of this one);
* a missing key reads as None and stays missing, except where null is a value of its own
  (``Gate.value``, ``Gate.passed``, the latency gate's p95s and ``BrownoutStatus.p95_ms``):
  there a missing key reads as ``ABSENT`` and null as None;
* values are taken as stored, without conversion (the CRD types the ones it declares); a
  null anywhere else, or a nested object (or list of them) that is not one, is kept in
  ``extra`` as it was and the field reads as missing. A field set later is written over it.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Final, Self, TypeVar


class Absent(enum.Enum):
    """The type of ``ABSENT``."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT
"""A missing key, for the fields where null is a value of its own."""

_T = TypeVar("_T")


def present(value: _T | Absent) -> _T | None:
    """The value of a nullable field, None when its key is missing."""
    return None if value is ABSENT else value


_NULLABLE: Final = {"nullable": True}
"""Field metadata: the key may hold null (None) or be missing (``ABSENT``, the default)."""


def _one(record: type[_Record]) -> dict[str, Any]:
    """Field metadata: the key holds one nested object."""
    return {"record": record}


def _many(record: type[_Record]) -> dict[str, Any]:
    """Field metadata: the key holds a list of nested objects."""
    return {"record": record, "many": True}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class _Record:
    """``from_dict``/``to_dict`` for a dataclass whose fields (but ``extra``) are the snake_case
    spelling of its camelCase keys."""

    extra: dict[str, Any]
    _keys: ClassVar[dict[str, Field[Any]]]

    @classmethod
    def _known(cls) -> dict[str, Field[Any]]:
        if "_keys" not in cls.__dict__:
            cls._keys = {_camel(f.name): f for f in fields(cls)  # type: ignore[arg-type]
                         if f.name != "extra"}
        return cls._keys

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Read a stored object (see the module docstring for what is kept how)."""
        known = cls._known()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in d.items():
            f = known.get(key)
            if f is None or not _fits(f, value):
                extra[key] = _copy(value)
            else:
                values[f.name] = _read(f, value)
        return cls(**values, extra=extra)  # type: ignore[call-arg]

    @classmethod
    def of(cls, value: Self | Mapping[str, Any] | None) -> Self | None:
        """``value`` typed: as it is, read from a stored dict, or None."""
        if value is None or isinstance(value, cls):
            return value
        assert isinstance(value, Mapping)
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """The object to store: the fields that are set, then ``extra`` under them."""
        out: dict[str, Any] = {}
        for key, f in self._known().items():
            value = getattr(self, f.name)
            if value is ABSENT or (value is None and not f.metadata.get("nullable")):
                continue
            out[key] = _write(value)
        for key, value in self.extra.items():
            out.setdefault(key, _copy(value))
        return out


def _fits(f: Field[Any], value: Any) -> bool:
    """False for a null where null means nothing of its own, and for a nested object that is
    not one: both stay in ``extra`` as they were (a status edited by hand cannot stop the
    machine) and the field reads as missing."""
    if value is None:
        return bool(f.metadata.get("nullable"))
    if "record" not in f.metadata:
        return True
    if f.metadata.get("many"):
        return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)
    return isinstance(value, Mapping)


def _copy(value: Any) -> Any:
    """A copy that shares nothing mutable with ``value``."""
    return value if isinstance(value, str | int | float | None) else copy.deepcopy(value)


def _read(f: Field[Any], value: Any) -> Any:
    record = f.metadata.get("record")
    if record is None:
        return _copy(value)
    if f.metadata.get("many"):
        return [record.from_dict(item) for item in value]
    return record.from_dict(value)


def _write(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_write(item) for item in value]
    return _copy(value)


# ---- status.rollout ------------------------------------------------------------------------

@dataclass
class HistoryEntry(_Record):
    """One line of ``status.rollout.history``: a phase change or a new step."""

    time: str | None = None
    phase: str | None = None
    step: int | None = None
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Gate(_Record):
    """One analysis gate: the candidate's measured ``value`` against ``threshold``."""

    name: str | None = None
    value: float | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    """None: no data."""
    threshold: float | None = None
    comparison: str | None = None
    """``<=`` or ``>=``."""
    candidate_p95_ms: float | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    """The latency gate only, like ``stable_p95_ms``."""
    stable_p95_ms: float | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    samples: int | None = None
    """The agreement gate only, like the fields below: the comparisons in the window."""
    confidence: float | None = None
    lower_bound: float | None = None
    """The confidence interval on ``value`` (``confidence.wilson``)."""
    upper_bound: float | None = None
    samples_needed: int | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    """While undecided: the further comparisons after which the interval clears the threshold
    if ``value`` holds; None: not reachable (``value`` is at or too close to the threshold)."""
    passed: bool | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    """None: no data, or (with a value) undecided."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Analysis(_Record):
    """``status.rollout.lastAnalysis``: the verdict of the latest analysis and its gates."""

    time: str | None = None
    step: int | None = None
    verdict: str | None = None
    """``Passed``, ``Failed``, ``Inconclusive``, ``Undecided`` or ``NoData``."""
    message: str | None = None
    requests: int | None = None
    min_requests: int | None = None
    gates: list[Gate] | None = field(default=None, metadata=_many(Gate))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference(_Record):
    """``status.rollout.reference``: the last stable p95 and agreement measured, which stand
    in while the stable variant serves nothing (the 100% step)."""

    stable_p95_ms: float | None = None
    agreement: float | None = None
    agreement_samples: int | None = None
    """The comparisons ``agreement`` was measured over."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutStatus(_Record):
    """``status.rollout``: all the state of a rollout (a restarted operator resumes from it)."""

    candidate: str | None = None
    stable: str | None = None
    """The stable traffic it started from, ``variant=weight,...``."""
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    step: int | None = None
    """1-based index into ``steps``; 0 while pending."""
    steps: list[int] | None = None
    started_at: str | None = None
    step_started_at: str | None = None
    failures: int | None = None
    history: list[HistoryEntry] | None = field(default=None, metadata=_many(HistoryEntry))
    last_analysis: Analysis | None = field(default=None, metadata=_one(Analysis))
    reference: Reference | None = field(default=None, metadata=_one(Reference))
    handled_action: str | None = None
    """The last ``rollout-action`` annotation handled (each is handled once)."""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- status.brownout -----------------------------------------------------------------------

@dataclass
class BrownoutStatus(_Record):
    """``status.brownout``: the brownout's phase, its share and the windows it is timing."""

    variant: str | None = None
    """The variant that takes the share: the spec's, or the one the operator chose (held from
    engaging to release; while inactive, the one an engagement would take now)."""
    chosen_by: str | None = None
    """``spec``, ``frontier`` or ``fallback`` (``brownout.choose``)."""
    choice: str | None = None
    """Why that variant (or why none can be chosen)."""
    stable: str | None = None
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    since: str | None = None
    """When the phase last changed."""
    share: int | None = None
    objective_ms: float | None = None
    release_below_ms: float | None = None
    max_share: int | None = None
    stable_replicas: int | None = None
    stable_max_replicas: int | None = None
    p95_ms: float | Absent | None = field(default=ABSENT, metadata=_NULLABLE)
    """The stable variant's p95 at the last measurement; None when it saw no requests,
    ``ABSENT`` before the first one."""
    measured_at: str | None = None
    metrics_error: str | None = None
    pressure_since: str | None = None
    """Start of the current overload window (engage or step)."""
    calm_since: str | None = None
    """Start of the current calm window (release)."""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- status.variants[] ---------------------------------------------------------------------

@dataclass
class VariantStatus(_Record):
    """One entry of ``status.variants``: replicas, weight, share, provenance and what was
    measured."""

    name: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    min_replicas: int | None = None
    """The HPA's bounds, with autoscaling (like ``max_replicas``)."""
    max_replicas: int | None = None
    weight: int | None = None
    """The weight asked (spec.traffic, then the rollout and the brownout)."""
    share: int | None = None
    """The percent of the requests it receives (``shares.delivered``)."""
    derived_from: str | None = None
    optimization: str | None = None
    p95_ms: float | None = None
    rps: float | None = None
    error_rate: float | None = None
    agreement: float | None = None
    parameters: int | None = None
    size_bytes: int | None = None
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    gpu_memory: dict[str, Any] | None = None
    """GPU fit: the estimate's parts (``gpufit.MemoryEstimate.to_status``) and, once the pods
    have loaded, ``measuredBytes``."""
    placement: dict[str, Any] | None = None
    """GPU fit: where its pods go (``pools.Placement.to_status``)."""
    cost_per_hour: float | None = None
    cost_per_1k_requests: float | None = None
    pareto: str | None = None
    """``frontier``, ``dominated`` or ``unmeasured`` (``pareto``)."""
    dominated_by: list[str] | None = None
    startup: dict[str, Any] | None = None
    """Where the start of its newest Ready pod went (``startup``): seconds per phase, the pod."""
    build: dict[str, Any] | None = None
    """A built variant: its Job's phase, key, progress (``optimize.VariantBuild.status``)."""
    provenance: dict[str, Any] | None = None
    """A built variant: the verified record of the artifact it serves and its offline report
    (``optimize.record``)."""
    scaled_to_zero: bool | None = None
    """True while the variant is at zero by its idle policy (a state, not a failure)."""
    extra: dict[str, Any] = field(default_factory=dict)

    MEASURED: ClassVar[tuple[str, ...]] = (
        "p95Ms", "rps", "errorRate", "agreement", "parameters", "sizeBytes", "cpuMillicores",
        "memoryBytes", "gpuMemory")
    """The keys measured by Prometheus and metrics.k8s.io, carried between refreshes (of
    ``gpuMemory`` only its ``measuredBytes``)."""
    MEASURED_GPU_MEMORY: ClassVar[str] = "measuredBytes"

    def measured(self) -> dict[str, Any]:
        """The measured fields it has, by key."""
        out = self.to_dict()
        found = {k: out[k] for k in self.MEASURED if k in out}
        found.pop("gpuMemory", None)
        peak = (self.gpu_memory or {}).get(self.MEASURED_GPU_MEMORY)
        if isinstance(peak, int) and not isinstance(peak, bool):
            found["gpuMemory"] = {self.MEASURED_GPU_MEMORY: peak}
        return found
