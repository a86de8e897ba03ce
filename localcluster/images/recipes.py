"""What each image holds: the references, the recipe inputs and one recipe per image.

The one place for the image references (``REFS``, ``image_ref``) and for what goes into each
image: its steps (one layer each, bottom first) and its runtime config. Everything that keys a
layer is read from here (``steps.step_key``); ``REPO_DIR`` is the source tree the recipes read
(``bench/images.py`` points it at a copy it may edit). The Dockerfiles are generated from
these recipes (``dockerfile.py``, ``python -m localcluster images dockerfile``).

The model-server images are one per runtime of the capability table
(``msv_contract.capabilities.RUNTIMES``), named ``model-server-<runtime>`` and made by
``runtime_recipe``: debian, venv, the server's own dependencies (``SERVER_EXTRAS``, one layer
every runtime image shares), the runtime's extra less those (its only layer of its own), then
the model_server package. A new runtime is a record in the table, not a recipe here.

To put another of the project's packages into an image, add its directory (relative to the
repository) to that image's ``package`` step; ``SHARED_PACKAGES`` goes into both the
model-server and the operator image. The package must also be listed in ``pyproject.toml``'s
``[tool.setuptools.packages.find] include`` (the step installs a wheel of the project).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localcluster import paths
from localcluster.images.host import ImageError
from localcluster.images.oci import ImageConfig
from msv_contract import capabilities as caps
from msv_contract.env import MODEL_MOUNT

# -- Image references (the one place) -------------------------------------------------------

REGISTRY = "docker.io"
REPOSITORY = "modelservice"
TAG = "0.1.0"
RUNTIME_IMAGES = {caps.image_name(rt): rt for rt in caps.RUNTIME_NAMES}
"""Model-server image name -> the runtime it carries (``model-server-torch``: ``torch``, ...)."""
NAMES = (*RUNTIME_IMAGES, "operator", "gateway", "model-store", "pause", "prometheus",
         "prometheus-operator", "metrics-server", "prometheus-adapter", "keda", "keda-adapter")


def image_ref(name: str) -> str:
    """Fully qualified reference as containerd stores it: ``docker.io/modelservice/NAME:0.1.0``."""
    return f"{REGISTRY}/{REPOSITORY}/{name}:{TAG}"


REFS = {name: image_ref(name) for name in NAMES}

# -- Recipe inputs ----------------------------------------------------------------------------

REPO_DIR = paths.PACKAGE_DIR.parent
PAUSE_SOURCE = paths.PACKAGE_DIR / "pause" / "pause.c"
DEBIAN_RELEASE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PIP_VERSION = "26.3"  # pip inside /opt/venv: the same as the dev venv, so the caches agree
VENV = "/opt/venv"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
UID = 10001
USER_NAME = "modelservice"

# Run by mmdebstrap on the host with the new root in $1 (like the Dockerfiles' RUN useradd).
DEBIAN_HOOK = (
    f'chroot "$1" groupadd --gid {UID} {USER_NAME}'
    f' && chroot "$1" useradd --uid {UID} --gid {UID} --no-create-home'
    f" --home-dir /nonexistent --shell /usr/sbin/nologin {USER_NAME}"
    f' && mkdir -p "$1{MODEL_MOUNT}" && chown {UID}:{UID} "$1{MODEL_MOUNT}"'
    ' && : > "$1/etc/resolv.conf" && rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*'
)
DEBIAN_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                   "/usr/share/locale/*", "/usr/share/lintian/*")

MODEL_SERVER_ENV = (
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "HF_HUB_OFFLINE=1",
    "TRANSFORMERS_OFFLINE=1", "HF_HOME=/tmp/hf", f"MODEL_SERVER_MODEL_DIR={MODEL_MOUNT}",
    "MODEL_SERVER_PORT=8080",
)
PYTHON_ENV = (MODEL_SERVER_ENV[0], "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
CUDA_ENV = ("NVIDIA_DRIVER_CAPABILITIES=compute,utility",)
"""For images whose runtime runs on CUDA: what the NVIDIA container toolkit mounts (the
device plugin chooses the devices; the image never asks for all of them)."""

SERVER_EXTRAS = ("server", "s3")
"""The model server's own extras (FastAPI, gRPC, boto3, ...): one layer every runtime image
shares, below its framework layer."""

# Packages of this repository both the model-server and the operator image install (beside
# their own), as directories relative to the repository.
SHARED_PACKAGES: tuple[str, ...] = ("msv_contract",)


def requirements(extras: Iterable[str], pyproject: Path | None = None) -> list[str]:
    """The project's requirement strings for ``extras``, self-references expanded."""
    project = tomllib.loads((pyproject or REPO_DIR / "pyproject.toml").read_text())["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    reqs: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise ImageError(f"pyproject.toml has no extra {extra!r}")
        for r in optional[extra]:
            if r.replace(" ", "").startswith(f"{name}["):
                todo += r.split("[", 1)[1].split("]", 1)[0].split(",")
            else:
                reqs.append(r)
    return sorted(set(reqs), key=str.lower)


# -- Recipes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One layer of a recipe: a name and how to key and make it (``steps.py``).

    ``args`` by kind: ``pip`` the requirements; ``apt`` Debian packages (of
    ``DEBIAN_RELEASE``); ``package`` directories of this repository installed as one wheel of
    the project; ``gobin`` binaries ``localcluster build`` made.
    """

    name: str
    kind: str  # debian | venv | pip | apt | package | pause | static | gobin
    args: tuple[str, ...] = ()


DEBIAN = Step("debian", "debian")
STATIC = Step("static", "static")
# The static base: who the Go binaries may run as, and a /tmp (no shell, no libc).
STATIC_FILES = {
    "etc/passwd": f"root:x:0:0:root:/root:/sbin/nologin\n"
                  f"{USER_NAME}:x:{UID}:{UID}::/nonexistent:/sbin/nologin\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    "etc/group": f"root:x:0:\n{USER_NAME}:x:{UID}:\nnogroup:x:65534:\n",
}
VENV_STEP = Step("venv", "venv")


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    config: ImageConfig
    dockerfile: str = ""
    """Where its generated Dockerfile lives, relative to the repository ("": none)."""


LABELS = (("org.opencontainers.image.licenses", "Apache-2.0"),)


def runtime_recipe(runtime: caps.Runtime) -> Recipe:
    """The model-server image of ``runtime``: the shared server layers plus its framework."""
    name = caps.image_name(runtime.name)
    shared = requirements(SERVER_EXTRAS)
    framework = [r for r in requirements((runtime.extra, *SERVER_EXTRAS)) if r not in shared]
    frameworks = ", ".join(f.name for f in caps.FRAMEWORKS.values() if f.runtime == runtime.name)
    return Recipe(name, (
        DEBIAN, VENV_STEP, Step("server-deps", "pip", tuple(shared)),
        Step(runtime.name, "pip", tuple(framework)),
        Step("model_server", "package", ("model_server", *SHARED_PACKAGES)),
    ), ImageConfig(
        entrypoint=("model-server",), cmd=("serve",),
        env=MODEL_SERVER_ENV + (CUDA_ENV if "cuda" in runtime.devices else ()),
        user=f"{UID}:{UID}", workdir="/tmp", ports=(8080, 8081), labels=(
            ("org.opencontainers.image.title", f"modelservice {name}"),
            ("org.opencontainers.image.description",
             f"Open Inference Protocol v2 model server, {runtime.name} runtime ({frameworks}; "
             f"{', '.join(runtime.devices)})"), *LABELS)),
        dockerfile=f"model_server/Dockerfile.{runtime.name}")


GATEWAY_PACKAGES = ("nginx", "libnginx-mod-http-lua")
"""Debian's nginx (bookworm: 1.22): the gateway's data plane, and its lua module (with the
NDK and lua-resty-core it depends on): the routing tier's retry budget (docs/gateway.md)."""


def recipes() -> dict[str, Recipe]:
    """What each image is made of (reads pyproject.toml for the extras' requirements)."""
    operator_deps = Step("operator-deps", "pip", tuple(requirements(("operator",))))
    return {
        **{r.name: r for r in map(runtime_recipe, caps.RUNTIMES.values())},
        "operator": Recipe("operator", (
            DEBIAN, VENV_STEP, operator_deps,
            Step("msv_operator", "package", ("operator/msv_operator", *SHARED_PACKAGES)),
        ), ImageConfig(entrypoint=("msv-operator",), cmd=("run",), env=PYTHON_ENV,
                       user=f"{UID}:{UID}", ports=(8080, 8081), labels=LABELS),
            dockerfile="operator/Dockerfile"),
        # The operator's layers (its deps hold the kubernetes client and prometheus_client the
        # controller uses), then nginx, then the localcluster package (localcluster.gateway;
        # its other modules are never imported in the image).
        "gateway": Recipe("gateway", (
            DEBIAN, VENV_STEP, operator_deps, Step("nginx", "apt", GATEWAY_PACKAGES),
            Step("localcluster", "package", ("localcluster",)),
        ), ImageConfig(entrypoint=(f"{VENV}/bin/python", "-m", "localcluster.gateway"),
                       env=PYTHON_ENV, user=f"{UID}:{UID}", workdir="/tmp", ports=(80, 8080),
                       labels=(("org.opencontainers.image.title", "modelservice gateway"),
                               ("org.opencontainers.image.description",
                                "Gateway API data plane of the local cluster: nginx driven by "
                                "localcluster.gateway"), *LABELS))),
        "model-store": Recipe("model-store", (
            DEBIAN, VENV_STEP, Step("moto", "pip", ("moto[server]",)),
        ), ImageConfig(entrypoint=("moto_server",), cmd=("--host", "0.0.0.0", "--port", "9000"),
                       env=PYTHON_ENV, user=f"{UID}:{UID}", workdir="/tmp", ports=(9000,),
                       labels=LABELS)),
        "pause": Recipe("pause", (Step("pause", "pause"),),
                        ImageConfig(entrypoint=("/pause",), user="65535:65535", labels=LABELS)),
        "prometheus": Recipe("prometheus", (STATIC, Step("prometheus", "gobin", ("prometheus",))),
                             ImageConfig(entrypoint=("/bin/prometheus",), user="65534:65534",
                                         workdir="/prometheus", ports=(9090,), labels=LABELS)),
        "prometheus-operator": Recipe("prometheus-operator", (
            STATIC, Step("prometheus-operator", "gobin",
                         ("operator", "prometheus-config-reloader")),
        ), ImageConfig(entrypoint=("/bin/operator",), user="65534:65534", ports=(8080,),
                       labels=LABELS)),
        "metrics-server": Recipe("metrics-server", (
            STATIC, Step("metrics-server", "gobin", ("metrics-server",)),
        ), ImageConfig(entrypoint=("/bin/metrics-server",), user="65534:65534",
                       ports=(10250,), labels=LABELS)),
        "prometheus-adapter": Recipe("prometheus-adapter", (
            STATIC, Step("prometheus-adapter", "gobin", ("prometheus-adapter",)),
        ), ImageConfig(entrypoint=("/bin/prometheus-adapter",), user="65534:65534",
                       ports=(6443,), labels=LABELS)),
        # KEDA as upstream ships it: the operator and its metrics adapter, one image each.
        "keda": Recipe("keda", (STATIC, Step("keda", "gobin", ("keda",))),
                       ImageConfig(entrypoint=("/bin/keda",), user="65534:65534",
                                   ports=(8080, 8081, 9666), labels=LABELS)),
        "keda-adapter": Recipe("keda-adapter", (
            STATIC, Step("keda-adapter", "gobin", ("keda-adapter",)),
        ), ImageConfig(entrypoint=("/bin/keda-adapter",), user="65534:65534",
                       ports=(6443, 8080), labels=LABELS)),
    }


def package_dirs() -> list[str]:
    """The repository directories some image installs as packages (the ``package`` steps)."""
    return sorted({d for r in recipes().values() for s in r.steps if s.kind == "package"
                   for d in s.args})
