"""Where the local control plane keeps things: the binary cache and the state directory.

Both live outside the repository. ``MSV_CACHE`` (default ``~/.cache/modelservice``) holds the
built binaries under ``bin/<component>-<version>/``; ``MSV_STATE`` (default
``$MSV_CACHE/state``) holds a running cluster's certificates, kubeconfig, pids and logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from localcluster import versions

PACKAGE_DIR = Path(__file__).resolve().parent
GO_DIR = PACKAGE_DIR / "go"
STAGES_DIR = PACKAGE_DIR / "stages"


def cache_dir() -> Path:
    return Path(os.environ.get("MSV_CACHE") or "~/.cache/modelservice").expanduser()


def bin_root() -> Path:
    return cache_dir() / "bin"


def default_state_dir() -> Path:
    env = os.environ.get("MSV_STATE")
    return (Path(env).expanduser() if env else cache_dir() / "state").resolve()


def resolve_state_dir(state_dir: str | os.PathLike[str] | None = None) -> Path:
    return Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()


def component_bin_dir(name: str) -> Path:
    return bin_root() / versions.component(name).bin_dir_name


def binary(name: str) -> Path:
    """Path of a built executable (``kube-apiserver``, ``etcd``, ``kwok``, ``kubectl``, ...)."""
    return bin_root() / versions.component_of_binary(name).bin_dir_name / name


def kubectl() -> Path:
    return binary("kubectl")


def helm() -> Path:
    return binary("helm")


def images_dir() -> Path:
    """Where ``localcluster images`` keeps built layers and OCI archives (survives ``down``)."""
    return cache_dir() / "images"


def containerd_root() -> Path:
    """containerd's content store and snapshots: imported images survive ``down``."""
    return cache_dir() / "containerd"


def containerd_socket(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The CRI/containerd socket of the real node of the cluster in ``state_dir``."""
    return resolve_state_dir(state_dir) / "containerd" / "containerd.sock"


def kubeconfig(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The admin kubeconfig of the cluster in ``state_dir`` (default: the shared one)."""
    return resolve_state_dir(state_dir) / "kubeconfig"
