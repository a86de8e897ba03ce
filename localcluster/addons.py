"""Third-party CRDs the project installs into the local cluster, taken from Go modules.

``crd_files(name)`` downloads the pinned module through the Go module proxy (``go mod
download``, cached in Go's module cache; with the Go toolchain the module asks for,
``versions.toolchain_of``) and returns the CRD manifests it ships.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster import versions


@dataclass(frozen=True)
class CrdSource:
    module: str
    version: str
    patterns: tuple[str, ...]  # globs inside the module


ADDONS: dict[str, CrdSource] = {
    "prometheus-operator": CrdSource(
        "github.com/prometheus-operator/prometheus-operator",
        versions.PROMETHEUS_OPERATOR,
        ("example/prometheus-operator-crd/monitoring.coreos.com_*.yaml",),
    ),
    # The experimental channel: HTTPRoute's rules[].retry, which the local cluster's gateway
    # implements (docs/gateway.md), is only there. Of its x-k8s.io alpha kinds only
    # XBackendTrafficPolicy (the gateway's retry budget) is installed.
    "gateway-api": CrdSource(
        "sigs.k8s.io/gateway-api", versions.GATEWAY_API,
        ("config/crd/experimental/gateway.networking.k8s.io_*.yaml",
         "config/crd/experimental/gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml"),
    ),
    # KEDA's own kinds (ScaledObject, ScaledJob, TriggerAuthentication,
    # ClusterTriggerAuthentication) and its eventing ones (CloudEventSource,
    # ClusterCloudEventSource): its operator watches all six and does not start without them.
    "keda": CrdSource(
        "github.com/kedacore/keda/v2", versions.KEDA,
        ("config/crd/bases/keda.sh_*.yaml", "config/crd/bases/eventing.keda.sh_*.yaml"),
    ),
}


class AddonError(RuntimeError):
    """Unknown add-on or the module could not be downloaded."""


def module_dir(module: str, version: str) -> Path:
    go = shutil.which("go")
    if not go:
        raise AddonError("the Go toolchain is not on PATH (needed to fetch CRD modules)")
    toolchain = versions.toolchain_of(module)
    env = dict(os.environ, **({"GOTOOLCHAIN": toolchain} if toolchain else {}))
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True, text=True, check=False, cwd=Path.home(), env=env,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if "Dir" not in info or not Path(info["Dir"]).is_dir():
        reason = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        raise AddonError(f"go mod download {module}@{version} failed: {reason}")
    return Path(info["Dir"])


def crd_files(name: str) -> list[Path]:
    """CRD YAML files of add-on ``name`` (``prometheus-operator``, ``gateway-api``, ``keda``).

    Install them with ``kubectl apply --server-side -f FILE`` (they are too large for the
    client-side last-applied annotation). To read them in Python use
    ``yaml.load_all(text, Loader=yaml.BaseLoader)``: the Prometheus Operator CRDs contain a
    bare ``=`` scalar that ``yaml.safe_load`` rejects.
    """
    try:
        src = ADDONS[name]
    except KeyError:
        raise AddonError(f"unknown add-on {name!r}; known: {', '.join(sorted(ADDONS))}") from None
    root = module_dir(src.module, src.version)
    files: list[Path] = []
    for pattern in src.patterns:
        found = [f for f in sorted(root.glob(pattern))
                 if "kind: CustomResourceDefinition" in f.read_text()]
        if not found:
            raise AddonError(f"{src.module}@{src.version} has no CRD file matching {pattern}")
        files += found
    return files
