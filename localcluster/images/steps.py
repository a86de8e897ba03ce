"""Each kind of recipe step: what keys its layer and how the layer is made.

``step_key`` hashes a step's inputs (Debian release and packages; venv path and pip version;
constraints and requirements; an apt step's packages and script; the packages' source
files; ``pause.c`` and gcc; the Go binaries) chained to its parent's key; ``layer_maker``
returns the function that fills a new layer's rootfs: ``mmdebstrap`` for the Debian base,
a script in the overlay chroot (``chroot.run_step``) for the venv, pip, apt and package
steps, plain files for the rest.
Called by ``builder.py``; ``dockerfile.py`` writes the same scripts (``venv_script``,
``pip_script``, ``package_script``) into the generated Dockerfiles.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from localcluster import paths
from localcluster.images import recipes
from localcluster.images.cache import files_digest, layer_key
from localcluster.images.chroot import CHROOT_SRC, run_step
from localcluster.images.host import ImageError, need_root, need_tool, run
from localcluster.images.oci import COPY_BUFFER
from localcluster.images.recipes import (
    DEBIAN_EXCLUDES,
    DEBIAN_HOOK,
    DEBIAN_PACKAGES,
    DEBIAN_RELEASE,
    PAUSE_SOURCE,
    PIP_VERSION,
    SITE_PACKAGES,
    STATIC_FILES,
    VENV,
    Step,
)

# The source tree is read as ``recipes.REPO_DIR`` at call time (a benchmark may repoint it).


def step_key(step: Step, parent: str) -> str:
    """The cache key of ``step`` on top of the layer keyed ``parent``."""
    repo = recipes.REPO_DIR
    if step.kind == "debian":
        return layer_key(parent, "debian", DEBIAN_RELEASE, "minbase", *DEBIAN_PACKAGES,
                         *DEBIAN_EXCLUDES, DEBIAN_HOOK)
    if step.kind == "venv":
        return layer_key(parent, "venv", VENV, PIP_VERSION)
    if step.kind == "pip":
        return layer_key(parent, "pip", (repo / "constraints.txt").read_bytes(), *step.args,
                         pip_script(""))
    if step.kind == "apt":
        return layer_key(parent, "apt", DEBIAN_RELEASE, *step.args, apt_script(step.args))
    if step.kind == "package":
        return layer_key(parent, "package", (repo / "pyproject.toml").read_bytes(),
                         (repo / "README.md").read_bytes(),
                         *(i for d in step.args for i in (d, files_digest(repo / d))))
    if step.kind == "pause":
        return layer_key(parent, "pause", PAUSE_SOURCE.read_bytes(), _gcc_version())
    if step.kind == "static":
        return layer_key(parent, "static", *(f"{k}\0{v}" for k, v in STATIC_FILES.items()))
    if step.kind == "gobin":
        return layer_key(parent, "gobin", *(f"{b}\0{_file_sha256(_go_binary(b))}"
                                            for b in step.args))
    raise ImageError(f"unknown step kind {step.kind!r}")


def layer_maker(step: Step, lowers: Sequence[Path], label: str) -> Callable[[Path], None]:
    """The function that makes ``step``'s layer in a new rootfs dir over ``lowers`` (top first)."""
    what = f"image {label}: layer {step.name}"

    def make(rootfs: Path) -> None:
        if step.kind == "debian":
            need_root()
            debian_rootfs(rootfs)
        elif step.kind == "venv":
            need_root()
            run_step(lowers, rootfs, venv_script(), what)
        elif step.kind == "pip":
            need_root()
            with tempfile.TemporaryDirectory(prefix="msv-img-") as d:
                shutil.copy2(recipes.REPO_DIR / "constraints.txt", Path(d) / "constraints.txt")
                run_step(lowers, rootfs, pip_requirements_script(step.args), what,
                         src=Path(d))
        elif step.kind == "apt":
            need_root()
            run_step(lowers, rootfs, apt_script(step.args), what)
        elif step.kind == "package":
            need_root()
            with tempfile.TemporaryDirectory(prefix="msv-img-") as d:
                whl = _wheel([recipes.REPO_DIR / a for a in step.args], Path(d))
                run_step(lowers, rootfs, package_script(whl.name), what, src=Path(d))
        elif step.kind == "pause":
            need_tool("gcc", "gcc libc6-dev")
            rootfs.mkdir()
            run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", rootfs / "pause", PAUSE_SOURCE],
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


def debian_rootfs(dest: Path) -> None:
    """mmdebstrap the Debian base into ``dest`` (what python:3.11-slim provides)."""
    need_tool("mmdebstrap", "mmdebstrap")
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
           "--include=" + ",".join(DEBIAN_PACKAGES),
           *[f"--dpkgopt=path-exclude={p}" for p in DEBIAN_EXCLUDES],
           f"--customize-hook={DEBIAN_HOOK}", DEBIAN_RELEASE, str(dest)]
    # No mirror argument and no input: mmdebstrap uses Debian's default mirror.
    run(cmd, "mmdebstrap", stdin=subprocess.DEVNULL)


def venv_script() -> str:
    """The venv step: ``/opt/venv`` with the pinned pip, byte-compiled."""
    return (f"python3 -m venv {VENV}\n"
            f"{VENV}/bin/pip install -q --no-warn-script-location pip=={PIP_VERSION}\n"
            f"python3 -m compileall -q -q {VENV}/lib >/dev/null || true\n")


def pip_script(args: str) -> str:
    """``pip install ARGS`` into the venv, then drop ``tests`` folders and byte-compile."""
    return (f"pip install --no-warn-script-location {args}\n"
            f"find {VENV}/lib -path '*site-packages/*/tests' -prune -exec rm -rf {{}} +\n"
            f"python -m compileall -q -q {SITE_PACKAGES} >/dev/null || true\n")


def pip_requirements_script(requirements: Sequence[str]) -> str:
    """A pip step: its requirements, held to ``constraints.txt`` (at ``/tmp/src``)."""
    args = " ".join(f"'{a}'" for a in requirements)
    return pip_script(f"-c {CHROOT_SRC}/constraints.txt {args}")


def apt_script(packages: Sequence[str]) -> str:
    """An apt step: Debian packages with no service started (a policy-rc.d for the install),
    no default site, no package lists left behind."""
    return ("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d\n"
            "chmod 755 /usr/sbin/policy-rc.d\n"
            "apt-get update -q\n"
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            + " ".join(packages) + "\n"
            "rm -f /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default\n"
            "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* "
            "/var/log/dpkg.log\n")


def package_script(wheel: str) -> str:
    """A package step: the project's wheel (at ``/tmp/src/wheels``), without dependencies."""
    return pip_script(f"--no-deps --no-index {CHROOT_SRC}/wheels/{wheel}")


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _wheel(package_dirs: Sequence[Path], stage: Path) -> Path:
    """Build the project's wheel holding only ``package_dirs`` (like the Dockerfile's COPY)."""
    repo = recipes.REPO_DIR
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(repo / f, stage / f)
    rels = [d.relative_to(repo) for d in package_dirs]
    for d, rel in zip(package_dirs, rels, strict=True):
        _copy_tree(d, stage / rel)
    (stage / "operator").mkdir(exist_ok=True)  # a packages.find root; empty is enough
    wheels = stage / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", wheels, stage], f"building the wheel of {', '.join(map(str, rels))}")
    (whl,) = wheels.glob("*.whl")
    return whl


def _gcc_version() -> str:
    gcc = need_tool("gcc", "gcc libc6-dev")
    return subprocess.run([gcc, "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()[0]


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
