"""Builds the project's container images locally (no Docker, no registry) and imports them.

Owns the image references, the layer recipes, the layer cache and the OCI image-layout writer.
Eight images, each an OCI archive under ``paths.images_dir()``:

- ``model-server``: debian + venv + torch + server deps (extras ``torch,s3``) + model_server;
- ``operator``: debian + venv + operator deps (extra ``operator``) + msv_operator;
- ``model-store``: debian + venv + ``moto[server]`` (``python3 -m http.server`` needs no layer);
- ``pause``: one static binary built from ``localcluster/pause/pause.c``;
- ``prometheus``, ``prometheus-operator`` (also the config reloader: the operator names its
  command), ``metrics-server``, ``prometheus-adapter``: a tiny ``static`` layer
  (``/etc/passwd``, ``/etc/group``, ``/tmp``) plus the static Go binaries
  ``python -m localcluster build`` made, in ``/bin``.

The Dockerfiles stay the source of truth for what goes in; this builder reproduces them with
Debian's own packages. The ``debian`` layer is ``mmdebstrap`` (bookworm, minbase, python3,
python3-venv, ca-certificates, user 10001). Every later layer runs one script in a chroot of an
overlayfs mount (lower = the layers below, upper = a fresh directory), so the upper directory is
exactly what the step added; pip runs inside with the machine's pip cache bind-mounted. Each
layer is cached under ``layers/<key>/`` where the key hashes its parent's key and its inputs
(Debian release and package list; constraints and requirements; the package's source files),
so an unchanged layer is never rebuilt and a code change rebuilds only the top layer.
``import_images`` imports archives with ``ctr images import`` unless containerd already has
the same manifest digest, and sends only the blobs containerd does not have yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from localcluster import paths

Out = Callable[[str], None]

# -- Image references (the one place) -------------------------------------------------------

REGISTRY = "docker.io"
REPOSITORY = "modelservice"
TAG = "0.1.0"
NAMES = ("model-server", "operator", "model-store", "pause", "prometheus", "prometheus-operator",
         "metrics-server", "prometheus-adapter")


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
    f' && mkdir -p "$1/mnt/models" && chown {UID}:{UID} "$1/mnt/models"'
    ' && : > "$1/etc/resolv.conf" && rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*'
)
DEBIAN_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                   "/usr/share/locale/*", "/usr/share/lintian/*")

# Inside the build chroot: /tmp is a host scratch directory holding these mounts.
CHROOT_SRC = "/tmp/src"
CHROOT_PIP_CACHE = "/tmp/pip-cache"
CLEAN_AFTER = ("root/.cache", "root/.config", "root/.local", "var/cache/debconf/tmp.ci")

MODEL_SERVER_ENV = (
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "HF_HUB_OFFLINE=1",
    "TRANSFORMERS_OFFLINE=1", "HF_HOME=/tmp/hf", "MODEL_SERVER_MODEL_DIR=/mnt/models",
    "MODEL_SERVER_PORT=8080",
)
PYTHON_ENV = (MODEL_SERVER_ENV[0], "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")


class ImageError(RuntimeError):
    """A build or import could not run; the message is one line saying what to do."""


# -- OCI image layout ---------------------------------------------------------------------------

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OPAQUE_XATTR = "trusted.overlay.opaque"
COPY_BUFFER = 4 << 20  # tarfile's default 16 KiB makes multi-GB layers CPU-bound


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what the Dockerfile's ENV/USER/... lines say)."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    ports: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class LayerBlob:
    """An uncompressed layer tar: its digest is its diff_id."""

    name: str
    path: Path
    diff_id: str
    size: int


@dataclass
class BuiltLayer(LayerBlob):
    key: str = ""
    rootfs: Path = Path()
    cached: bool = False
    seconds: float = 0.0


@dataclass
class BuiltImage:
    name: str
    ref: str
    archive: Path
    manifest_digest: str
    layers: list[BuiltLayer] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _HashingWriter:
    """A write-only file that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.hash, self.size = inner, hashlib.sha256(), 0

    def tell(self) -> int:
        return self.size

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self.inner.write(b)
        self.size += len(b)
        return len(b)


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Every entry below ``root``, parents before children, names in byte order."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name.encode()):
        p = Path(entry.path)
        yield p
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(p)


def _is_opaque(p: Path) -> bool:
    try:
        return os.getxattr(p, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def write_layer_tar(src: Path, dest: Path) -> tuple[str, int]:
    """Write ``src`` (an overlayfs upper dir or a plain tree) as an OCI layer tar.

    Deterministic order and numeric owners; overlayfs whiteouts (0/0 character devices) become
    ``.wh.NAME`` entries and opaque directories get ``.wh..wh..opq``. Returns (diff_id, size).
    """
    with open(dest, "wb") as raw:
        hw = _HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
            for p in _walk_sorted(src):
                arc = p.relative_to(src).as_posix()
                st = p.lstat()
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    parent = Path(arc).parent.as_posix()
                    wh = tarfile.TarInfo(f".wh.{p.name}" if parent == "." else
                                         f"{parent}/.wh.{p.name}")
                    wh.mtime = int(st.st_mtime)
                    tar.addfile(wh)
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue
                info = tar.gettarinfo(str(p), arcname=arc)
                info.uname = info.gname = ""
                if info.isreg():
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if info.isdir() and _is_opaque(p):
                    opq = tarfile.TarInfo(f"{arc}/.wh..wh..opq")
                    opq.mtime = int(st.st_mtime)
                    tar.addfile(opq)
        return "sha256:" + hw.hash.hexdigest(), hw.size


def image_config_json(config: ImageConfig, diff_ids: Sequence[str],
                      history: Sequence[str]) -> bytes:
    cfg: dict[str, Any] = {"Entrypoint": list(config.entrypoint)}
    if config.cmd:
        cfg["Cmd"] = list(config.cmd)
    if config.env:
        cfg["Env"] = list(config.env)
    if config.user:
        cfg["User"] = config.user
    if config.workdir:
        cfg["WorkingDir"] = config.workdir
    if config.ports:
        cfg["ExposedPorts"] = {f"{p}/tcp": {} for p in config.ports}
    if config.labels:
        cfg["Labels"] = dict(config.labels)
    return _canonical({
        "architecture": "amd64", "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": h} for h in history],
    })


def manifest_json(config_blob: bytes, layers: Sequence[LayerBlob]) -> bytes:
    return _canonical({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": _digest(config_blob),
                   "size": len(config_blob)},
        "layers": [{"mediaType": MT_LAYER, "digest": la.diff_id, "size": la.size}
                   for la in layers],
    })


def index_json(ref: str, manifest: bytes) -> bytes:
    tag = ref.rsplit(":", 1)[1]
    return _canonical({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {ANNOTATION_IMAGE_NAME: ref, ANNOTATION_REF_NAME: tag},
        }],
    })


def write_oci_archive(dest: Path, ref: str, layers: Sequence[LayerBlob], config: ImageConfig,
                      history: Sequence[str] = ()) -> str:
    """Write an OCI image-layout tar for one image; returns the manifest digest.

    An archive whose sidecar ``DEST.digest`` already names the same manifest is left alone.
    """
    config_blob = image_config_json(config, [la.diff_id for la in layers],
                                    history or [la.name for la in layers])
    manifest = manifest_json(config_blob, layers)
    digest = _digest(manifest)
    sidecar = dest.with_name(dest.name + ".digest")
    if dest.is_file() and sidecar.is_file() and sidecar.read_text().strip() == digest:
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # concurrent builds stay apart

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
        add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
        add_bytes(tar, "index.json", index_json(ref, manifest))
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        add_bytes(tar, f"blobs/sha256/{_digest(config_blob)[7:]}", config_blob)
        add_bytes(tar, f"blobs/sha256/{digest[7:]}", manifest)
        seen = set()
        for la in layers:
            if la.diff_id in seen:
                continue
            seen.add(la.diff_id)
            info = tarfile.TarInfo(f"blobs/sha256/{la.diff_id[7:]}")
            info.size, info.mode = la.size, 0o644
            with open(la.path, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, dest)
    sidecar.write_text(digest + "\n")
    return digest


# -- Layer cache ----------------------------------------------------------------------------------


def layer_key(parent: str, kind: str, *inputs: str | bytes) -> str:
    """Hash of everything that decides a layer's content, chained to its parent's key."""
    h = hashlib.sha256(f"{kind}\0{parent}\0".encode())
    for i in inputs:
        b = i.encode() if isinstance(i, str) else i
        h.update(len(b).to_bytes(8, "big") + b)
    return h.hexdigest()[:32]


def files_digest(root: Path, rel_to: Path | None = None) -> str:
    """Hash of the names and bytes of every file under ``root`` (caches and .pyc left out)."""
    h = hashlib.sha256()
    base = rel_to or root
    for p in _walk_sorted(root):
        if "__pycache__" in p.parts or p.suffix == ".pyc" or not p.is_file():
            continue
        h.update(p.relative_to(base).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def layers_dir() -> Path:
    return paths.images_dir() / "layers"


def cached_layer(name: str, key: str) -> BuiltLayer | None:
    d = layers_dir() / key
    meta = d / "layer.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    tar_path = d / "layer.tar"
    if not tar_path.is_file() or tar_path.stat().st_size != m["size"]:
        return None
    return BuiltLayer(name=name, path=tar_path, diff_id=m["diff_id"], size=m["size"], key=key,
                      rootfs=d / "rootfs", cached=True, seconds=m.get("seconds", 0.0))


def get_layer(name: str, key: str, make: Callable[[Path], None], out: Out,
              label: str) -> BuiltLayer:
    """The cached layer for ``key``, or run ``make(rootfs_dir)`` and cache what it leaves."""
    hit = cached_layer(name, key)
    if hit:
        out(f"==> {label}: layer {name} (cached)")
        return hit
    out(f"==> {label}: layer {name} (building)")
    t0 = time.monotonic()
    layers_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=layers_dir()))
    try:
        make(tmp / "rootfs")
        diff_id, size = write_layer_tar(tmp / "rootfs", tmp / "layer.tar")
        seconds = time.monotonic() - t0
        (tmp / "layer.json").write_text(json.dumps(
            {"name": name, "key": key, "diff_id": diff_id, "size": size,
             "seconds": round(seconds, 1)}, indent=1) + "\n")
        final = layers_dir() / key
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out(f"==> {label}: layer {name} built in {seconds:.0f} s ({_mb(size)})")
    built = cached_layer(name, key)
    assert built is not None
    built.cached, built.seconds = False, seconds
    return built


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- Running a build step -----------------------------------------------------------------------


def _need_root() -> None:
    if os.geteuid() != 0:
        raise ImageError("building images needs root (mmdebstrap, overlayfs mounts, chroot): "
                         "run `python -m localcluster images build` as root")


def _need_tool(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise ImageError(f"{tool} is not installed: apt-get install {package}")
    return found


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, **kw: Any) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _mount(*args: str | os.PathLike[str]) -> None:
    _run(["mount", *args], "mount " + " ".join(map(str, args)))


@contextlib.contextmanager
def _chroot(lowers: Sequence[Path], upper: Path,
            binds: dict[str, Path]) -> Iterator[tuple[Path, dict[str, str]]]:
    """Mount lowers (top first) + upper as overlayfs with /proc, /dev and a scratch /tmp.

    ``binds`` maps a name to a host path, mounted read-only at ``/tmp/NAME`` (``pip-cache`` is
    writable). Yields the merged root and the environment for commands run inside.
    """
    upper.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix=".chroot-", dir=upper.parent))
    work, merged, tmp = scratch / "work", scratch / "merged", scratch / "tmp"
    for d in (work, merged, tmp):
        d.mkdir()
    tmp.chmod(0o1777)
    mounted: list[Path] = []
    try:
        lower = ":".join(str(p) for p in lowers)
        _mount("-t", "overlay", "overlay", "-o",
               f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,"
               "index=off,metacopy=off", merged)
        mounted.append(merged)
        _mount("-t", "proc", "proc", merged / "proc")
        mounted.append(merged / "proc")
        _mount("--bind", "/dev", merged / "dev")
        mounted.append(merged / "dev")
        _mount("--bind", tmp, merged / "tmp")
        mounted.append(merged / "tmp")
        for etc in ("etc/resolv.conf", "etc/hosts"):  # name resolution for pip
            if Path("/" + etc).is_file() and (merged / etc).is_file():
                _mount("--bind", "/" + etc, merged / etc)
                mounted.append(merged / etc)
        for name, host in binds.items():
            target = tmp / name
            if host.is_dir():
                target.mkdir()
            else:
                target.touch()
            _mount("--bind", host, merged / "tmp" / name)
            mounted.append(merged / "tmp" / name)
            if name != "pip-cache":
                _mount("-o", "remount,bind,ro", merged / "tmp" / name)
        env = {"PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PIP_CACHE_DIR": CHROOT_PIP_CACHE, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "PIP_PROGRESS_BAR": "off", "PIP_ROOT_USER_ACTION": "ignore",
               "PIP_NO_INPUT": "1"}
        env.update(_forwarded_pip_env(binds))
        yield merged, env
    finally:
        for m in reversed(mounted):
            if subprocess.run(["umount", str(m)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        for rel in CLEAN_AFTER:
            p = upper / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def _pip_host_files() -> dict[str, Path]:
    """Host files named by the caller's PIP_* settings (a CA bundle, local wheel folders)."""
    found: dict[str, Path] = {}
    for key in ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_FIND_LINKS"):
        val = os.environ.get(key, "")
        if val.startswith("/") and " " not in val and Path(val).exists():
            found[f"host-{key.lower()}"] = Path(val)
    return found


def _forwarded_pip_env(binds: dict[str, Path]) -> dict[str, str]:
    env = {}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "PIP_TRUSTED_HOST",
                "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
                "no_proxy"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    for key in ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_FIND_LINKS"):
        name = f"host-{key.lower()}"
        if name in binds:
            env[key] = f"/tmp/{name}"
    return env


def pip_cache_dir() -> Path:
    return Path(os.environ.get("PIP_CACHE_DIR") or paths.cache_dir() / "pip")


def run_step(lowers: Sequence[Path], upper: Path, script: str, what: str,
             src: Path | None = None) -> None:
    """Run ``script`` (sh -e) in a chroot of lowers + upper; ``src`` is visible at /tmp/src."""
    cache = pip_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    binds = {"pip-cache": cache, **_pip_host_files()}
    if src is not None:
        binds["src"] = src
    with _chroot(lowers, upper, binds) as (root, env):
        _run(["chroot", root, "/bin/sh", "-ec", script], what, env=env)


def debian_rootfs(dest: Path) -> None:
    """mmdebstrap the Debian base into ``dest`` (what python:3.11-slim provides)."""
    _need_tool("mmdebstrap", "mmdebstrap")
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
           "--include=" + ",".join(DEBIAN_PACKAGES),
           *[f"--dpkgopt=path-exclude={p}" for p in DEBIAN_EXCLUDES],
           f"--customize-hook={DEBIAN_HOOK}", DEBIAN_RELEASE, str(dest)]
    # No mirror argument and no input: mmdebstrap uses Debian's default mirror.
    _run(cmd, "mmdebstrap", stdin=subprocess.DEVNULL)


# -- Recipes --------------------------------------------------------------------------------------


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


def _pip_script(args: str) -> str:
    return (f"pip install --no-warn-script-location {args}\n"
            f"find {VENV}/lib -path '*site-packages/*/tests' -prune -exec rm -rf {{}} +\n"
            f"python -m compileall -q -q {SITE_PACKAGES} >/dev/null || true\n")


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _wheel(package_dir: Path, stage: Path) -> Path:
    """Build the project's wheel holding only ``package_dir`` (like the Dockerfile's COPY)."""
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO_DIR / f, stage / f)
    rel = package_dir.relative_to(REPO_DIR)
    _copy_tree(package_dir, stage / rel)
    (stage / "operator").mkdir(exist_ok=True)  # a packages.find root; empty is enough
    wheels = stage / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", wheels, stage], f"building the wheel of {rel}")
    (whl,) = wheels.glob("*.whl")
    return whl


@dataclass(frozen=True)
class Step:
    """One layer of a recipe: a name and how to key and make it."""

    name: str
    kind: str  # debian | pip | package | pause | static | gobin
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


LABELS = (("org.opencontainers.image.licenses", "Apache-2.0"),)


def recipes() -> dict[str, Recipe]:
    """What each image is made of (reads pyproject.toml for the extras' requirements)."""
    return {
        "model-server": Recipe("model-server", (
            DEBIAN, VENV_STEP, Step("torch", "pip", ("torch",)),
            Step("server-deps", "pip", tuple(requirements(("torch", "s3")))),
            Step("model_server", "package", ("model_server",)),
        ), ImageConfig(entrypoint=("model-server",), cmd=("serve",), env=MODEL_SERVER_ENV,
                       user=f"{UID}:{UID}", workdir="/tmp", ports=(8080,), labels=(
                           ("org.opencontainers.image.title", "modelservice model-server"),
                           ("org.opencontainers.image.description",
                            "Open Inference Protocol v2 model server (CPU)"), *LABELS))),
        "operator": Recipe("operator", (
            DEBIAN, VENV_STEP, Step("operator-deps", "pip", tuple(requirements(("operator",)))),
            Step("msv_operator", "package", ("operator/msv_operator",)),
        ), ImageConfig(entrypoint=("msv-operator",), cmd=("run",), env=PYTHON_ENV,
                       user=f"{UID}:{UID}", ports=(8080, 8081), labels=LABELS)),
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
    }


def _gcc_version() -> str:
    gcc = _need_tool("gcc", "gcc libc6-dev")
    return subprocess.run([gcc, "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()[0]


def step_key(step: Step, parent: str) -> str:
    """The cache key of ``step`` on top of the layer keyed ``parent``."""
    if step.kind == "debian":
        return layer_key(parent, "debian", DEBIAN_RELEASE, "minbase", *DEBIAN_PACKAGES,
                         *DEBIAN_EXCLUDES, DEBIAN_HOOK)
    if step.kind == "venv":
        return layer_key(parent, "venv", VENV, PIP_VERSION)
    if step.kind == "pip":
        return layer_key(parent, "pip", (REPO_DIR / "constraints.txt").read_bytes(), *step.args,
                         _pip_script(""))
    if step.kind == "package":
        src = REPO_DIR / step.args[0]
        return layer_key(parent, "package", (REPO_DIR / "pyproject.toml").read_bytes(),
                         (REPO_DIR / "README.md").read_bytes(), step.args[0],
                         files_digest(src))
    if step.kind == "pause":
        return layer_key(parent, "pause", PAUSE_SOURCE.read_bytes(), _gcc_version())
    if step.kind == "static":
        return layer_key(parent, "static", *(f"{k}\0{v}" for k, v in STATIC_FILES.items()))
    if step.kind == "gobin":
        return layer_key(parent, "gobin", *(f"{b}\0{_file_sha256(_go_binary(b))}"
                                            for b in step.args))
    raise ImageError(f"unknown step kind {step.kind!r}")


def _make(step: Step, lowers: Sequence[Path], label: str) -> Callable[[Path], None]:
    what = f"image {label}: layer {step.name}"

    def make(rootfs: Path) -> None:
        if step.kind == "debian":
            _need_root()
            debian_rootfs(rootfs)
        elif step.kind == "venv":
            _need_root()
            run_step(lowers, rootfs, f"python3 -m venv {VENV}\n"
                     f"{VENV}/bin/pip install -q --no-warn-script-location pip=={PIP_VERSION}\n"
                     f"python3 -m compileall -q -q {VENV}/lib >/dev/null || true\n", what)
        elif step.kind == "pip":
            _need_root()
            with tempfile.TemporaryDirectory(prefix="msv-img-") as d:
                shutil.copy2(REPO_DIR / "constraints.txt", Path(d) / "constraints.txt")
                args = " ".join(f"'{a}'" for a in step.args)
                run_step(lowers, rootfs, _pip_script(
                    f"-c {CHROOT_SRC}/constraints.txt {args}"), what, src=Path(d))
        elif step.kind == "package":
            _need_root()
            with tempfile.TemporaryDirectory(prefix="msv-img-") as d:
                whl = _wheel(REPO_DIR / step.args[0], Path(d))
                run_step(lowers, rootfs, _pip_script(
                    f"--no-deps --no-index {CHROOT_SRC}/wheels/{whl.name}"), what, src=Path(d))
        elif step.kind == "pause":
            _need_tool("gcc", "gcc libc6-dev")
            rootfs.mkdir()
            _run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", rootfs / "pause", PAUSE_SOURCE],
                 "compiling pause.c (needs gcc and libc6-dev)")
            (rootfs / "pause").chmod(0o755)
        elif step.kind == "static":
            for rel, text in STATIC_FILES.items():
                (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
                (rootfs / rel).write_text(text)
                (rootfs / rel).chmod(0o644)
            (rootfs / "tmp").mkdir()
            (rootfs / "tmp").chmod(0o1777)
        elif step.kind == "gobin":
            (rootfs / "bin").mkdir(parents=True)
            for b in step.args:
                shutil.copyfile(_go_binary(b), rootfs / "bin" / b)
                (rootfs / "bin" / b).chmod(0o755)
    return make


def _go_binary(name: str) -> Path:
    """A binary ``python -m localcluster build`` made (the images only package it)."""
    path = paths.binary(name)
    if not path.is_file():
        raise ImageError(f"{name} is not built yet; run: python -m localcluster build")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(COPY_BUFFER):
            h.update(chunk)
    return h.hexdigest()


def archive_path(name: str) -> Path:
    return paths.images_dir() / f"{name}-{TAG}.oci.tar"


def build_image(name: str, out: Out = print,
                layer_memo: dict[str, BuiltLayer] | None = None) -> BuiltImage:
    """Build (or reuse) every layer of ``name`` and write its OCI archive."""
    if name not in NAMES:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(NAMES)}")
    recipe = recipes()[name]
    memo = {} if layer_memo is None else layer_memo
    label = f"image {name}"
    built: list[BuiltLayer] = []
    parent = ""
    for step in recipe.steps:
        key = step_key(step, parent)
        if key in memo:
            layer = memo[key]
            out(f"==> {label}: layer {step.name} (cached)")
        else:
            lowers = [b.rootfs for b in reversed(built)]
            layer = get_layer(step.name, key, _make(step, lowers, name), out, label)
            memo[key] = layer
        built.append(layer)
        parent = key
    history = [f"localcluster images: {s.kind} {s.name} {' '.join(s.args)}".strip()
               for s in recipe.steps]
    archive = archive_path(name)
    t0 = time.monotonic()
    digest = write_oci_archive(archive, REFS[name], built, recipe.config, history)
    out(f"==> {label}: {REFS[name]} {digest[:19]} ({_mb(sum(b.size for b in built))}, "
        f"archive {archive.name}, {time.monotonic() - t0:.0f} s)")
    return BuiltImage(name=name, ref=REFS[name], archive=archive, manifest_digest=digest,
                      layers=built)


def _select(names: Iterable[str] | None) -> list[str]:
    selected = list(names) if names else list(NAMES)
    unknown = [n for n in selected if n not in NAMES]
    if unknown:
        raise ImageError(f"unknown image {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return selected


def build(names: Iterable[str] | None = None, out: Out = print) -> dict[str, BuiltImage]:
    """Build the named images (default: all); unchanged layers come from the cache, and
    cached layers no current recipe uses any more are removed (``prune_layers``)."""
    memo: dict[str, BuiltLayer] = {}
    built = {n: build_image(n, out, memo) for n in _select(names)}
    prune_layers(out)
    return built


def current_layer_keys() -> set[str]:
    """The cache keys of every layer of every image as the sources stand now."""
    keys = set()
    for recipe in recipes().values():
        parent = ""
        for step in recipe.steps:
            try:
                parent = step_key(step, parent)
            except ImageError:  # a Go binary not built yet: its layer has no key to keep
                break
            keys.add(parent)
    return keys


def prune_layers(out: Out = print) -> int:
    """Remove cached layers that no current recipe uses (an old torch layer is ~11 GB with
    its rootfs); returns the bytes freed. Directories of builds in progress are left alone."""
    root = layers_dir()
    if not root.is_dir():
        return 0
    keep = current_layer_keys()
    freed = 0
    for d in root.iterdir():
        if d.name.startswith(".") or d.name in keep or not d.is_dir():
            continue
        freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(d, ignore_errors=True)
    if freed:
        out(f"==> images: removed cached layers no image uses any more ({_mb(freed)})")
    return freed


# -- Import into containerd ---------------------------------------------------------------------


def _ctr(socket: Path, namespace: str) -> list[str]:
    return [_need_tool("ctr", "containerd"), "--address", str(socket), "-n", namespace]


def containerd_images(socket: Path, namespace: str = "k8s.io") -> dict[str, str]:
    """{reference: target digest} of the images containerd has in ``namespace``."""
    proc = subprocess.run([*_ctr(socket, namespace), "images", "ls"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"cannot list containerd's images at {socket}: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    have = {}
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3:
            have[cols[0]] = cols[2]
    return have


def containerd_blobs(socket: Path, namespace: str = "k8s.io") -> set[str]:
    """Digests of the blobs in containerd's content store (``ctr content ls``)."""
    proc = subprocess.run([*_ctr(socket, namespace), "content", "ls", "-q"], capture_output=True,
                          text=True, check=False)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def write_thin_archive(archive: Path, have: set[str], dest: BinaryIO) -> int:
    """Copy ``archive`` to ``dest`` leaving out the blobs in ``have``; returns bytes left out.

    containerd's importer stores the blobs it is given and reads the others from its content
    store, so after a code change only the new top layer, config and manifest travel.
    """
    skipped = 0
    with tarfile.open(archive, "r:") as src, \
            tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT) as out:
        src.copybufsize = out.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
        for m in src:
            blob = m.name.split("blobs/sha256/", 1)
            if len(blob) == 2 and m.isreg() and f"sha256:{blob[1]}" in have:
                skipped += m.size
                continue
            out.addfile(m, src.extractfile(m) if m.isreg() else None)
    return skipped


def _ctr_import(socket: Path, namespace: str, img: BuiltImage, have: set[str], out: Out) -> None:
    """Import ``img``'s archive, sending only the blobs containerd lacks (the whole on failure)."""
    if have:
        cmd = [*_ctr(socket, namespace), "images", "import", "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            skipped = write_thin_archive(img.archive, have, proc.stdin)  # type: ignore[arg-type]
            proc.stdin.close()
        except BrokenPipeError:
            skipped = 0
        text = proc.stdout.read().decode(errors="replace")
        if proc.wait() == 0:
            if skipped:
                out(f"==> image {img.name}: {_mb(skipped)} of layers already in containerd")
            return
        out(f"==> image {img.name}: partial import failed ({text.strip()[-200:]}); "
            "importing the whole archive")
    _run([*_ctr(socket, namespace), "images", "import", img.archive],
         f"ctr images import {img.archive.name}")


def _check_socket(socket: Path) -> None:
    if not socket.is_socket():
        raise ImageError(f"no containerd socket at {socket}: start the cluster's node first "
                         "(python -m localcluster up)")


def import_images(socket: Path, names: Iterable[str] | None = None, namespace: str = "k8s.io",
                  out: Out = print, built: dict[str, BuiltImage] | None = None) -> list[str]:
    """Import the images' archives into containerd; returns the names actually imported.

    An image whose reference already points at the same manifest digest is skipped.
    """
    socket = Path(socket)
    _check_socket(socket)
    selected = _select(names)
    images = built if built is not None else build(selected, out)
    have = containerd_images(socket, namespace)
    imported = []
    for n in selected:
        img = images[n]
        if have.get(img.ref) == img.manifest_digest:
            out(f"==> image {n}: already in containerd ({img.manifest_digest[:19]})")
            continue
        out(f"==> image {n}: importing into containerd ({namespace}; image {_mb(img.size)})")
        t0 = time.monotonic()
        _ctr_import(socket, namespace, img, containerd_blobs(socket, namespace), out)
        if containerd_images(socket, namespace).get(img.ref) != img.manifest_digest:
            raise ImageError(f"containerd did not record {img.ref} at {img.manifest_digest}")
        out(f"==> image {n}: imported in {time.monotonic() - t0:.0f} s")
        imported.append(n)
    return imported


def load(socket: Path, names: Iterable[str] | None = None, out: Out = print) -> list[str]:
    """Build what is missing, then import into the containerd at ``socket``."""
    _check_socket(Path(socket))
    selected = _select(names)
    return import_images(Path(socket), selected, out=out, built=build(selected, out))
