"""Builds the control-plane binaries from the project's wrapper Go modules, idempotently.

Each component (a folder under ``localcluster/go/``) is built with ``go build -trimpath`` and
``CGO_ENABLED=0`` into ``$MSV_CACHE/bin/<component>-<version>/``. A stamp file there records a
hash of everything that decides the output (version, go.mod, go.sum, sources, ldflags, Go
version: the component's own ``toolchain`` when it names one, which the go command fetches
through the module proxy, else the local one); when it matches, the component is "up to
date" and nothing runs. Go's own module and build caches stay where Go keeps them (outside
the repository). With several packages, go names each file after its package; a component
may rename them (``_outputs``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from localcluster import paths, versions
from localcluster.versions import Component

STAMP = ".build-stamp"
RETRY = "python -m localcluster build"


class BuildError(RuntimeError):
    """A component failed to build; the message names module, version and the retry command."""


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError(
            "the Go toolchain (go >= 1.26) is not on PATH; install it, then run: " + RETRY
        )
    return go


def _go_version(go: str) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def module_dir(c: Component) -> Path:
    return paths.GO_DIR / c.name


def _stamp_key(c: Component, go_version: str) -> str:
    h = hashlib.sha256()
    h.update(f"{c.module}@{c.version}\n{c.toolchain or go_version}\n".encode())
    h.update("\n".join((*c.packages, *c.ldflags, *c.tags)).encode())
    for f in sorted(module_dir(c).iterdir()):
        if f.is_file() and (f.suffix == ".go" or f.name in ("go.mod", "go.sum")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _check_pin(c: Component) -> None:
    gomod = (module_dir(c) / "go.mod").read_text()
    if f"{c.module} {c.version}" not in gomod:
        raise BuildError(
            f"{module_dir(c) / 'go.mod'} does not require {c.module} {c.version} "
            "(localcluster/versions.py and the wrapper module disagree)"
        )


def _go_env(c: Component) -> dict[str, str]:
    """What ``go build`` of ``c`` runs with besides the caller's environment."""
    return {"CGO_ENABLED": "0", **({"GOTOOLCHAIN": c.toolchain} if c.toolchain else {})}


def _outputs(c: Component) -> list[tuple[str, str]]:
    """(file go build writes, binary name) per binary: with several packages go names each
    file after its package's last element, which a binary may rename (``keda``)."""
    if len(c.binaries) == 1:
        return [(c.binaries[0], c.binaries[0])]
    return [(pkg.rsplit("/", 1)[-1], b) for pkg, b in zip(c.packages, c.binaries, strict=True)]


def is_built(c: Component) -> bool:
    d = paths.bin_root() / c.bin_dir_name
    return (d / STAMP).is_file() and all((d / b).is_file() for b in c.binaries)


def missing_binaries() -> list[str]:
    return [b for c in versions.COMPONENTS for b in c.binaries if not paths.binary(b).is_file()]


def _run_with_progress(cmd: list[str], cwd: Path, env: dict[str, str], label: str,
                       out: Callable[[str], None]) -> subprocess.CompletedProcess[str]:
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(30):
            out(f"    ... still building {label} ({int(time.monotonic() - start)} s)")

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    finally:
        done.set()
        t.join()


def build_component(c: Component, go: str, go_version: str, *, force: bool = False,
                    out: Callable[[str], None] = print, index: str = "") -> bool:
    """Build one component; returns True if it built, False if it was already up to date."""
    _check_pin(c)
    target = paths.bin_root() / c.bin_dir_name
    key = _stamp_key(c, go_version)
    stamp = target / STAMP
    if not force and is_built(c) and stamp.read_text().strip() == key:
        out(f"{index}{c.name} {c.version}: up to date ({target})")
        return False
    out(f"{index}{c.name} {c.version}: building {', '.join(c.binaries)} ...")
    start = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{c.name}-", dir=target.parent))
    env = dict(os.environ, **_go_env(c))
    ldflags = " ".join(("-s", "-w", *c.ldflags))
    cmd = [go, "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags]
    if c.tags:
        cmd += ["-tags", ",".join(c.tags)]
    cmd += ["-o"]
    cmd += [str(tmp / c.binaries[0])] if len(c.binaries) == 1 else [str(tmp) + os.sep]
    cmd += list(c.packages)
    try:
        proc = _run_with_progress(cmd, module_dir(c), env, c.name, out)
        if proc.returncode != 0:
            hand = shlex.join([*cmd[:cmd.index("-o")], "-o", f"{target}{os.sep}", *c.packages])
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
            raise BuildError(
                f"building {c.module}@{c.version} failed (go build exited {proc.returncode}):\n"
                f"{tail}\nretry with: {RETRY} {c.name}\n"
                f"(the failing command, run in {module_dir(c)}: "
                f"{' '.join(f'{k}={v}' for k, v in _go_env(c).items())} {hand})"
            )
        target.mkdir(parents=True, exist_ok=True)
        for made, b in _outputs(c):
            os.replace(tmp / made, target / b)
        stamp.write_text(key + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out(f"{index}{c.name} {c.version}: built in {time.monotonic() - start:.0f} s -> {target}")
    return True


def build(names: Iterable[str] | None = None, *, force: bool = False,
          out: Callable[[str], None] = print) -> list[str]:
    """Build the named components (default: all); returns the names that were (re)built."""
    go = _go()
    go_version = _go_version(go)
    selected = [versions.component(n) for n in names] if names else list(versions.COMPONENTS)
    built = []
    for i, c in enumerate(selected, 1):
        if build_component(c, go, go_version, force=force, out=out,
                           index=f"[{i}/{len(selected)}] "):
            built.append(c.name)
    return built


def main_build(names: list[str], force: bool) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    try:
        built = build(names or None, force=force, out=out)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("all components up to date" if not built else f"built: {', '.join(built)}")
    return 0
