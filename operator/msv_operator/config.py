"""OperatorConfig: every operator setting, its environment variable and its CLI flag.

``load(argv, environ)`` merges, in increasing priority: defaults, ``MSV_*`` environment
variables, command-line flags. ``__main__`` calls it; docs/operator-config.md documents it.

The model-server images are settings per runtime of the capability table
(``msv_contract.capabilities.RUNTIMES``): ``MSV_<RUNTIME>_IMAGE`` / ``--<runtime>-image`` for
CPU variants and ``MSV_<RUNTIME>_GPU_IMAGE`` / ``--<runtime>-gpu-image`` for GPU ones (empty:
that runtime is not served on that device); ``builders.serving_image`` picks among them.

GPU fit (docs/operator-config.md, "GPU fit"): ``MSV_GPU_FIT`` switches the estimate, the
choice of pool and the costs (of CPU-only ModelServices too) on (the default) or off;
``MSV_GPU_PRICES`` is the price table as JSON (``prices.parse_prices``: a product outside
``prices.KNOWN_PRODUCTS`` is refused, naming the setting and the key);
``MSV_GPU_FIT_READ_CREDENTIALS`` lets the operator read a ModelService's
``spec.model.credentialsSecret`` to sign its S3 header reads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from msv_contract import capabilities as caps
from msv_contract.api import GROUP, MANAGED_BY
from msv_operator import prices

IMAGE_REPOSITORY = "modelservice"
IMAGE_TAG = "0.1.0"
FIELD_MANAGER = MANAGED_BY
PREFIX = GROUP

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value the operator cannot use (the message names the env var/flag)."""


@dataclass(frozen=True)
class RuntimeImages:
    """The model-server images of one runtime; None: the runtime is not served there."""

    cpu: str | None
    """For ModelServices without ``spec.gpu``."""
    gpu: str | None
    """For ModelServices with ``spec.gpu``."""

    def on(self, gpu: bool) -> str | None:
        return self.gpu if gpu else self.cpu


def default_image(runtime: str) -> str:
    """``modelservice/model-server-<runtime>:0.1.0``, the image the local builder makes."""
    return f"{IMAGE_REPOSITORY}/{caps.image_name(runtime)}:{IMAGE_TAG}"


DEFAULT_IMAGES: Mapping[str, RuntimeImages] = {
    rt.name: RuntimeImages(default_image(rt.name),
                           default_image(rt.name) if "cuda" in rt.devices else None)
    for rt in caps.RUNTIMES.values()}
"""Per runtime: its image for CPU, and the same image for GPU where the runtime's wheels
carry CUDA (torch); none for GPU otherwise (a GPU ModelService is refused until set)."""


def uniform_images(cpu: str | None, gpu: str | None = None) -> dict[str, RuntimeImages]:
    """Every runtime served by the same images (an image built with every runtime's extra)."""
    return {rt: RuntimeImages(cpu, gpu) for rt in caps.RUNTIME_NAMES}


def image_env(runtime: str, gpu: bool) -> str:
    """``MSV_TORCH_IMAGE``, ``MSV_TORCH_GPU_IMAGE``, ... (the chart sets these)."""
    return f"MSV_{runtime.upper().replace('-', '_')}_{'GPU_' if gpu else ''}IMAGE"


def image_flag(runtime: str, gpu: bool) -> str:
    """``--torch-image``, ``--torch-gpu-image``, ..."""
    return f"--{runtime}-{'gpu-' if gpu else ''}image"


REPLACED_SETTINGS = ("MSV_DEFAULT_IMAGE", "MSV_DEFAULT_GPU_IMAGE")
"""One image for every framework is gone: a TensorFlow model in the torch image crash-looped."""


def _replaced(name: str, flags: bool = False) -> ConfigError:
    new = image_flag if flags else image_env
    settings = ", ".join(new(rt, gpu) for rt in caps.RUNTIME_NAMES for gpu in (False, True))
    return ConfigError(f"{name} was replaced by one model-server image per runtime: set "
                       f"{settings} (docs/operator-config.md)")


def _replaced_flag(name: str) -> str:
    """``MSV_DEFAULT_IMAGE`` -> ``--default-image``."""
    return "--" + name.removeprefix("MSV_").lower().replace("_", "-")


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (``--namespace``, ``MSV_NAMESPACES``); empty = all namespaces."""

    images: Mapping[str, RuntimeImages] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    """Model-server images per runtime, for ModelServices without ``spec.server.image``
    (``MSV_<RUNTIME>_IMAGE``, ``MSV_<RUNTIME>_GPU_IMAGE``)."""

    log_format: str = "text"
    """``text`` or ``json`` (``MSV_LOG_FORMAT``)."""

    log_level: str = "INFO"
    """Python log level (``MSV_LOG_LEVEL``)."""

    metrics_port: int = 8080
    """Port of the operator's Prometheus ``/metrics`` (``MSV_METRICS_PORT``); 0 disables."""

    health_port: int = 8081
    """Port of the liveness endpoint ``/healthz`` (``MSV_HEALTH_PORT``); 0 disables."""

    bind_address: str = "0.0.0.0"
    """Address the metrics and health endpoints listen on (``MSV_BIND_ADDRESS``)."""

    max_workers: int = 16
    """Concurrent reconciles (threads) (``MSV_MAX_WORKERS``)."""

    resync_seconds: float = 300.0
    """Interval of the per-ModelService resync timer (``MSV_RESYNC_SECONDS``). A resync that
    finds nothing changed sends no write."""

    discovery_seconds: float = 30.0
    """How long a capability answer (ServiceMonitor / HTTPRoute / XBackendTrafficPolicy served?)
    is reused (``MSV_DISCOVERY_SECONDS``)."""

    qps: float = 200.0
    """Client-side limit of the operator's mutating requests per second (``MSV_QPS``)."""

    burst: int = 400
    """Burst allowed above ``qps`` (``MSV_BURST``)."""

    prometheus_url: str = ""
    """Prometheus HTTP API the rollout analysis and the per-variant status read
    (``MSV_PROMETHEUS_URL``, ``--prometheus-url``, chart value ``prometheus.url``); empty:
    no measurements, and a rollout pauses at its first analysis (never promotes blind)."""

    prometheus_timeout: float = 5.0
    """Timeout of one Prometheus query in seconds (``MSV_PROMETHEUS_TIMEOUT``)."""

    measure_seconds: float = 60.0
    """How often variants without a rollout are measured, and the window then used
    (``MSV_MEASURE_SECONDS``); during a rollout its ``analysis.interval``/``window`` apply."""
    leader_election: bool = False
    """Run as one of several replicas: only the holder of a ``coordination.k8s.io`` Lease
    reconciles (``MSV_LEADER_ELECTION``, ``--leader-election``)."""

    lease_name: str = "modelservice-operator"
    """Name of the Lease (``MSV_LEASE_NAME``)."""

    lease_namespace: str = "default"
    """Namespace of the Lease (``MSV_LEASE_NAMESPACE``; default ``$POD_NAMESPACE``, else the
    service account's namespace, else ``default``)."""

    lease_duration: float = 15.0
    """Seconds a standby waits after the last renewal it saw before taking over
    (``MSV_LEASE_DURATION``)."""

    renew_deadline: float = 10.0
    """The leader stops writing when it could not renew for this long
    (``MSV_RENEW_DEADLINE``); must be below the lease duration."""

    retry_period: float = 2.0
    """How often the leader renews and a standby tries to acquire (``MSV_RETRY_PERIOD``)."""

    identity: str = ""
    """This replica's name in the Lease (``MSV_LEADER_IDENTITY``; default ``$POD_NAME`` or
    the host name, plus a random suffix)."""

    gpu_fit: bool = True
    """Estimate each GPU variant's memory from its artifact's headers, place it on the
    cheapest pool that holds it and report its cost (``MSV_GPU_FIT``, ``--gpu-fit``); off:
    GPU variants are placed as ``spec.gpu`` says and Nodes are not watched."""

    gpu_fit_read_credentials: bool = False
    """Read ``spec.model.credentialsSecret`` to sign the S3 requests of the header reads
    (``MSV_GPU_FIT_READ_CREDENTIALS``; the operator then needs get on Secrets)."""

    gpu_prices: prices.Prices = field(default_factory=lambda: prices.DEFAULT_PRICES)
    """Per device-hour, US dollars (``MSV_GPU_PRICES``, ``--gpu-prices``: JSON
    ``{"products": {...}, "mig": {...}, "cpu": usd}`` over the list prices of
    ``prices.LIST_PRICES``; ``cpu``: per vCPU-hour of a ModelService without spec.gpu,
    ``prices.CPU_LIST_PRICE`` when absent, 0: free)."""

    model_cache_url: str = ""
    """The node-local model cache agent's Service (``MSV_MODEL_CACHE_URL``,
    ``--model-cache-url``; the chart's ``modelCache``): the pull init containers ask it first
    (docs/model-cache.md). Empty: they pull from the store."""

    activator_service: str = ""
    """The activator's Service, ``<name>`` in the operator's namespace (``lease_namespace``)
    or ``<namespace>/<name>`` (``MSV_ACTIVATOR_SERVICE``; the chart sets it with
    ``scaleToZero.enabled``). Empty: no scale to zero (a ``minReplicas: 0`` keeps one pod and
    is reported, docs/scale-to-zero.md)."""

    keda_prometheus_url: str = ""
    """The Prometheus KEDA's triggers ask (``MSV_KEDA_PROMETHEUS_URL``; default
    ``prometheus_url``): an address KEDA's pods can reach."""

    field_manager: str = field(default=FIELD_MANAGER)
    """Server-side apply field manager (not configurable from outside; fixed by design)."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def activator(self) -> tuple[str, str] | None:
        """(namespace, name) of the activator Service; None: not configured."""
        if not self.activator_service:
            return None
        ns, _, name = self.activator_service.rpartition("/")
        return (ns or self.lease_namespace, name)


def _env_number(environ: Mapping[str, str], name: str, default: T,
                convert: Callable[[str], T], expected: str) -> T:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {expected}") from None


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _env_number(environ, name, default, int, "an integer")


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    return _env_number(environ, name, default, float, "a number")


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _default_lease_namespace(env: Mapping[str, str]) -> str:
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _default_identity(env: Mapping[str, str]) -> str:
    return f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def parse_gpu_prices(raw: str | None, name: str = "MSV_GPU_PRICES") -> prices.Prices:
    """The price table of ``raw`` (JSON; empty: the list prices); ConfigError naming
    ``name`` and the key for a table the operator cannot use."""
    if raw is None or not raw.strip():
        return prices.DEFAULT_PRICES
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not JSON ({exc.msg} at character {exc.pos}); expected "
                          '{"products": {"NVIDIA-L4": 0.8}, "mig": {...}}') from None
    try:
        return prices.parse_prices(doc)
    except prices.PriceError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def from_env(environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """Defaults overridden by ``MSV_*`` environment variables."""
    env = os.environ if environ is None else environ
    namespaces = tuple(n.strip() for n in env.get("MSV_NAMESPACES", "").split(",") if n.strip())
    for name in REPLACED_SETTINGS:
        if env.get(name):
            raise _replaced(name)

    def image(runtime: str, gpu: bool) -> str | None:
        value = env.get(image_env(runtime, gpu))
        return DEFAULT_IMAGES[runtime].on(gpu) if value is None else (value.strip() or None)

    cfg = OperatorConfig(
        namespaces=namespaces,
        images={rt: RuntimeImages(image(rt, False), image(rt, True))
                for rt in caps.RUNTIME_NAMES},
        log_format=env.get("MSV_LOG_FORMAT", "text") or "text",
        log_level=(env.get("MSV_LOG_LEVEL", "INFO") or "INFO").upper(),
        metrics_port=_env_int(env, "MSV_METRICS_PORT", 8080),
        health_port=_env_int(env, "MSV_HEALTH_PORT", 8081),
        bind_address=env.get("MSV_BIND_ADDRESS", "0.0.0.0") or "0.0.0.0",
        max_workers=_env_int(env, "MSV_MAX_WORKERS", 16),
        resync_seconds=_env_float(env, "MSV_RESYNC_SECONDS", 300.0),
        discovery_seconds=_env_float(env, "MSV_DISCOVERY_SECONDS", 30.0),
        qps=_env_float(env, "MSV_QPS", 200.0),
        burst=_env_int(env, "MSV_BURST", 400),
        prometheus_url=env.get("MSV_PROMETHEUS_URL", "") or "",
        prometheus_timeout=_env_float(env, "MSV_PROMETHEUS_TIMEOUT", 5.0),
        measure_seconds=_env_float(env, "MSV_MEASURE_SECONDS", 60.0),
        leader_election=_env_bool(env, "MSV_LEADER_ELECTION", False),
        lease_name=env.get("MSV_LEASE_NAME") or "modelservice-operator",
        lease_namespace=env.get("MSV_LEASE_NAMESPACE") or _default_lease_namespace(env),
        lease_duration=_env_float(env, "MSV_LEASE_DURATION", 15.0),
        renew_deadline=_env_float(env, "MSV_RENEW_DEADLINE", 10.0),
        retry_period=_env_float(env, "MSV_RETRY_PERIOD", 2.0),
        identity=env.get("MSV_LEADER_IDENTITY") or _default_identity(env),
        gpu_fit=_env_bool(env, "MSV_GPU_FIT", True),
        gpu_fit_read_credentials=_env_bool(env, "MSV_GPU_FIT_READ_CREDENTIALS", False),
        gpu_prices=parse_gpu_prices(env.get("MSV_GPU_PRICES")),
        model_cache_url=(env.get("MSV_MODEL_CACHE_URL") or "").strip(),
        activator_service=(env.get("MSV_ACTIVATOR_SERVICE") or "").strip(),
        keda_prometheus_url=(env.get("MSV_KEDA_PROMETHEUS_URL") or "").strip(),
    )
    return validate(cfg)


def validate(cfg: OperatorConfig) -> OperatorConfig:
    """Reject values the operator cannot run with."""
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"log format {cfg.log_format!r}: expected text or json")
    for name, port in (("metrics port", cfg.metrics_port), ("health port", cfg.health_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} {port}: expected 0..65535")
    if cfg.max_workers < 1:
        raise ConfigError(f"max workers {cfg.max_workers}: expected at least 1")
    if cfg.resync_seconds <= 0 or cfg.discovery_seconds < 0:
        raise ConfigError("resync seconds must be > 0 and discovery seconds >= 0")
    if cfg.qps <= 0 or cfg.burst < 1:
        raise ConfigError("qps must be > 0 and burst >= 1")
    if cfg.prometheus_url and not cfg.prometheus_url.startswith(("http://", "https://")):
        raise ConfigError(f"prometheus url {cfg.prometheus_url!r}: expected http(s)://host:port")
    if cfg.model_cache_url and not cfg.model_cache_url.startswith(("http://", "https://")):
        raise ConfigError(f"model cache url {cfg.model_cache_url!r}: expected http(s)://host:port")
    if cfg.prometheus_timeout <= 0 or cfg.measure_seconds <= 0:
        raise ConfigError("prometheus timeout and measure seconds must be > 0")
    unknown = sorted(set(cfg.images) - set(caps.RUNTIME_NAMES))
    if unknown:
        raise ConfigError(f"images: unknown runtime {', '.join(unknown)}; the runtimes are "
                          f"{', '.join(caps.RUNTIME_NAMES)}")
    if not 0 < cfg.retry_period < cfg.renew_deadline < cfg.lease_duration:
        raise ConfigError(
            f"leader election: expected 0 < retry period ({cfg.retry_period}) < renew deadline "
            f"({cfg.renew_deadline}) < lease duration ({cfg.lease_duration})")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msv-operator", description="The ModelService operator (kopf)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator until SIGTERM/SIGINT")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default)")
    for rt in caps.RUNTIME_NAMES:
        run.add_argument(image_flag(rt, False), dest=_image_dest(rt, False), metavar="IMAGE",
                         help=f"model-server image of runtime {rt} for CPU variants")
        run.add_argument(image_flag(rt, True), dest=_image_dest(rt, True), metavar="IMAGE",
                         help=f"model-server image of runtime {rt} for GPU variants "
                              "(empty: not served on GPU)")
    for name in REPLACED_SETTINGS:  # refused with a message naming the new settings
        run.add_argument(_replaced_flag(name), dest=name.lower(), help=argparse.SUPPRESS)
    run.add_argument("--log-format", choices=("text", "json"))
    run.add_argument("--log-level")
    run.add_argument("--metrics-port", type=int)
    run.add_argument("--health-port", type=int)
    run.add_argument("--bind-address")
    run.add_argument("--max-workers", type=int)
    run.add_argument("--resync-seconds", type=float)
    run.add_argument("--discovery-seconds", type=float)
    run.add_argument("--qps", type=float)
    run.add_argument("--burst", type=int)
    run.add_argument("--prometheus-url")
    run.add_argument("--prometheus-timeout", type=float)
    run.add_argument("--measure-seconds", type=float)
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--lease-name")
    run.add_argument("--lease-namespace")
    run.add_argument("--lease-duration", type=float)
    run.add_argument("--renew-deadline", type=float)
    run.add_argument("--retry-period", type=float)
    run.add_argument("--identity")
    run.add_argument("--gpu-fit", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--gpu-fit-read-credentials", action=argparse.BooleanOptionalAction,
                     default=None)
    run.add_argument("--gpu-prices", metavar="JSON")
    run.add_argument("--model-cache-url", metavar="URL")
    return parser


def _image_dest(runtime: str, gpu: bool) -> str:
    return image_flag(runtime, gpu).removeprefix("--").replace("-", "_")


def load(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, OperatorConfig]:
    """(command, config) from flags over environment over defaults."""
    args = build_parser().parse_args(argv)
    for name in REPLACED_SETTINGS:
        if getattr(args, name.lower()) is not None:
            raise _replaced(_replaced_flag(name), flags=True)
    cfg = from_env(environ)
    overrides: dict[str, object] = {}
    images = dict(cfg.images)
    for rt, current in cfg.images.items():
        cpu, gpu = (getattr(args, _image_dest(rt, g)) for g in (False, True))
        images[rt] = RuntimeImages(current.cpu if cpu is None else (cpu.strip() or None),
                                   current.gpu if gpu is None else (gpu.strip() or None))
    overrides["images"] = images
    if args.all_namespaces:
        overrides["namespaces"] = ()
    elif args.namespaces:
        overrides["namespaces"] = tuple(dict.fromkeys(args.namespaces))
    for attr in ("log_format", "log_level",
                 "metrics_port", "health_port", "bind_address", "max_workers",
                 "resync_seconds", "discovery_seconds", "qps", "burst", "prometheus_url",
                 "prometheus_timeout", "measure_seconds", "leader_election",
                 "lease_name", "lease_namespace", "lease_duration", "renew_deadline",
                 "retry_period", "identity", "gpu_fit", "gpu_fit_read_credentials",
                 "model_cache_url"):
        value = getattr(args, attr)
        if value is not None:
            overrides[attr] = value
    if args.gpu_prices is not None:
        overrides["gpu_prices"] = parse_gpu_prices(args.gpu_prices, "--gpu-prices")
    if "log_level" in overrides:
        overrides["log_level"] = str(overrides["log_level"]).upper()
    fields = {**cfg.__dict__, **overrides}
    return args.command, validate(OperatorConfig(**fields))
