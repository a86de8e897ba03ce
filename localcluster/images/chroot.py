"""Running one build step: a script in a chroot of an overlayfs mount of the layers below.

``run_step`` mounts the lower layers' rootfs directories (top first) with a fresh upper
directory, plus ``/proc``, ``/dev``, the host's resolver files and a scratch ``/tmp`` holding
the step's inputs (``/tmp/src``) and pip's cache (``/tmp/pip-cache``), runs ``sh -ec SCRIPT``
inside and unmounts: the upper directory then holds exactly what the step added. The caller's
pip index, proxy and certificate settings are passed through. Called by ``steps.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from localcluster import paths
from localcluster.images.host import run
from localcluster.images.recipes import VENV

# Inside the build chroot: /tmp is a host scratch directory holding these mounts.
CHROOT_SRC = "/tmp/src"
CHROOT_PIP_CACHE = "/tmp/pip-cache"
CLEAN_AFTER = ("root/.cache", "root/.config", "root/.local", "var/cache/debconf/tmp.ci")


def _mount(*args: str | os.PathLike[str]) -> None:
    run(["mount", *args], "mount " + " ".join(map(str, args)))


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
        run(["chroot", root, "/bin/sh", "-ec", script], what, env=env)
