"""Every model-server setting, read from `MODEL_SERVER_*` environment variables or CLI flags.

`Settings` is the single source: the CLI passes flags as init arguments (they win over the
environment), the operator sets only environment variables (docs/architecture.md), and the
app reads one cached instance through `get_settings()`. Tests build their own `Settings(...)`
and hand it to `create_app`, so nothing is parsed at import time.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_server.backends.base import Device, LoadOptions, PruningMethod, Quantization
from msv_contract import capabilities as caps
from msv_contract.env import PREFIX as ENV_PREFIX

TERMINATION_LOG = "/dev/termination-log"


def mirror_base_url(value: str) -> str:
    """A mirror target as `scheme://host[:port]`; ValueError naming what is wrong."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be http(s)://host[:port]")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError("must be the candidate Service's base URL, without a path")
    return f"{parts.scheme}://{parts.netloc}"


class Settings(BaseSettings):
    """The model server's configuration (env prefix `MODEL_SERVER_`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )

    model_name: str = Field(default="model", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    """Name the model is served under: /v2/models/{model_name}."""
    model_version: str = Field(default="1", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    """The one version this process serves (OIP v2 `versions`)."""
    variant: str = "default"
    """Variant label (for example `int8`), reported in metadata and metric labels."""
    model_dir: Path = Path("/mnt/models")
    """Local directory holding the model (pulled by `model-server pull` or mounted)."""
    framework: Literal[("auto", *caps.FRAMEWORK_NAMES)] = "auto"  # type: ignore[valid-type]
    """Backend to use; `auto` detects it from the files in model_dir."""
    task: str | None = None
    """transformers pipeline task (text-classification, text-generation, image-classification)."""
    quantization: Quantization = "none"
    pruning_method: PruningMethod = "none"
    pruning_amount: float = Field(default=0.0, ge=0.0, lt=1.0)
    device: Device = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    trust_remote_code: bool = False
    """Never on by default: a model directory must not run code unless this is set."""

    max_batch_size: int = Field(default=8, ge=1, le=4096)
    """Largest batch the dynamic batcher forms; 1 turns batching off."""
    max_delay_ms: float = Field(default=2.0, ge=0.0, le=10_000.0)
    """How long a follow-on batch may wait to fill up; an idle server dispatches at once."""
    max_queue: int = Field(default=256, ge=1)
    """Requests waiting for the model beyond this get 503 + Retry-After."""
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    """A request not answered within this gets 504."""
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Bodies larger than this get 413."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """OIP v2 gRPC (`inference.GRPCInferenceService`) on this port; unset: no gRPC (0: any)."""
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    infer_fast_path: bool = True
    """Answer infer requests in a raw ASGI handler ahead of FastAPI's router (same results)."""
    access_log: bool = False
    """uvicorn's per-request access log (off: it costs more than the protocol handling)."""
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """A connection that has not sent a request's complete headers within this is closed."""

    auth_tokens: Path | None = None
    """Bearer tokens (a file, one per line, or a directory of one-token files such as a
    mounted Secret); set: every endpoint but health needs `Authorization: Bearer <token>`."""
    auth_metrics: bool = True
    """With auth_tokens set, /metrics needs a token too (false: scrapes stay open)."""
    tls_cert_file: Path | None = None
    """PEM certificate chain (`tls.crt` of a kubernetes.io/tls Secret); set: REST and gRPC
    serve TLS only. Needs tls_key_file."""
    tls_key_file: Path | None = None
    """PEM private key (`tls.key`) matching tls_cert_file."""
    auth_reload_seconds: float = Field(default=2.0, ge=0.0, le=300.0)
    """How often auth_tokens is re-read while the server runs (a token Secret the kubelet
    updates takes effect within this after the kubelet wrote it); 0: read once at startup."""

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_port_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("auth_tokens", "tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _empty_security_path(cls, value: object) -> object:
        # An empty value is a templating slip, not "off": it must not serve in the clear.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (unset it to serve without authentication or TLS)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self

    mirror_url: str | None = None
    """Base URL of the rollout candidate's Service (`http://10.96.3.7:80`; https when the
    deployment serves TLS): a sampled share of requests is sent there in the background and
    the answers compared (docs/model-server.md, Mirroring). Unset or empty: mirroring off."""
    mirror_percent: float = Field(default=10.0, ge=0.0, le=100.0)
    """Share of requests mirrored to mirror_url, 0..100."""
    mirror_variant: str = Field(default="", pattern=r"^[A-Za-z0-9_.\-]*$")
    """The candidate variant's name (the `target` label of the mirror metrics); needed with
    mirror_url."""
    mirror_queue: int = Field(default=64, ge=1, le=100_000)
    """Mirrored requests waiting to be sent beyond this are dropped (and counted)."""
    mirror_timeout_seconds: float = Field(default=5.0, gt=0.0, le=300.0)
    """A mirrored request not answered within this counts as failed."""

    mirror_file: Path | None = None
    """The pod's annotations as the downward API writes them (`metadata.annotations`): the
    mirror annotation there (`msv_contract.api.ANNOTATION_MIRROR`: JSON `url`, `percent`,
    `variant`) turns mirroring on, changes its target or turns it off while the server runs, checked
    every mirror_file_interval_seconds. The operator sets this, not mirror_url, so a rollout
    restarts no pod. Not together with mirror_url."""
    mirror_file_interval_seconds: float = Field(default=1.0, gt=0.0, le=300.0)
    """How often mirror_file is read (a small file; the kubelet refreshes it on its sync)."""

    @field_validator("mirror_url", mode="before")
    @classmethod
    def _mirror_url(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value
        return mirror_base_url(value)

    @field_validator("mirror_file", mode="before")
    @classmethod
    def _empty_mirror_file_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _mirror_target(self) -> Settings:
        if self.mirror_url is not None and not self.mirror_variant:
            raise ValueError(
                f"{ENV_PREFIX}MIRROR_VARIANT (the candidate's name) must be set with "
                f"{ENV_PREFIX}MIRROR_URL"
            )
        if self.mirror_url is not None and self.mirror_file is not None:
            raise ValueError(
                f"set {ENV_PREFIX}MIRROR_URL (a fixed mirror) or {ENV_PREFIX}MIRROR_FILE "
                "(the mirror the pod's annotation names), not both"
            )
        return self

    exit_on_load_failure: bool = True
    """Exit with code 4 when the model cannot load (off: stay up, unready, for debugging)."""
    termination_log: Path = Path(TERMINATION_LOG)
    """File for the one-paragraph error on a failed start (Kubernetes terminationMessagePath);
    written only when it exists and is writable."""
    drain_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
    """After SIGTERM: report not ready and keep serving this long before closing (0: at once)."""

    @field_validator("task", mode="before")
    @classmethod
    def _empty_task_is_none(cls, value: object) -> object:
        return None if value in ("", "none") else value

    def load_options(self) -> LoadOptions:
        """The subset the backend needs."""
        return LoadOptions(
            task=self.task,
            device=self.device,
            quantization=self.quantization,
            pruning_method=self.pruning_method,
            pruning_amount=self.pruning_amount,
            torch_threads=self.torch_threads,
            trust_remote_code=self.trust_remote_code,
        )


def env_names() -> dict[str, str]:
    """`MODEL_SERVER_*` variable name -> Settings field, for every setting."""
    return {ENV_PREFIX + name.upper(): name for name in Settings.model_fields}


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """`MODEL_SERVER_*` variables in `environ` that no setting reads (pydantic ignores them).

    Each entry names the variable and, when one is close, the setting it was probably meant
    to be, e.g. "MODEL_SERVER_MAX_BATCH (did you mean MODEL_SERVER_MAX_BATCH_SIZE?)".
    """
    environ = os.environ if environ is None else environ
    known = env_names()
    out = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        suffixes = [k[len(ENV_PREFIX) :] for k in known]
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.75)
        out.append(f"{key} (did you mean {ENV_PREFIX}{close[0]}?)" if close else key)
    return out


def termination_log_path(environ: Mapping[str, str] | None = None) -> Path:
    """The termination-message file when no Settings could be built (pull, bad settings)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_PREFIX + "TERMINATION_LOG") or TERMINATION_LOG)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests pass their own)."""
    return Settings()


def detect_framework(model_dir: Path) -> str:
    """Guess the backend from the files in `model_dir` (used when framework is `auto`):
    the first framework of the capability table whose `model_files` match."""
    frameworks = caps.FRAMEWORKS.values()
    for fw in frameworks:
        if any(p.is_file() for g in fw.model_files for p in model_dir.glob(g)):
            return fw.name
    for fw in frameworks:
        if any(g.startswith("*.") and model_dir.suffix == g[1:] for g in fw.model_files):
            return fw.name
    expected = ", ".join(f"{' or '.join(fw.model_files)} ({fw.name})" for fw in frameworks)
    raise ValueError(
        f"cannot tell the framework of {model_dir}: expected {expected}; "
        f"set {ENV_PREFIX}FRAMEWORK"
    )
