"""Image builder, end to end on a private containerd: cold build + import, warm, one-line change.

1. cold: empties the layer cache (``$MSV_CACHE/images``), builds all four images and imports
   them into a containerd started by this script (its own root, state and socket in a temp
   dir; CRI off);
2. checks inside containers (``ctr run``, no network): the model-server image imports torch
   and model_server (timed), its console script answers; the operator image runs
   ``msv-operator --help``; the model-store image imports moto; the pause container exits 0
   on SIGTERM;
3. warm: the same build + import again (goal: seconds, nothing rebuilt or imported);
4. a one-line change in a model_server file (in a copy of the sources): only the top layer of
   the model-server image is rebuilt and re-imported.

Then it stops that containerd and removes its mounts and files.

    python bench/images.py [--keep-cache]      # as root

Results: bench/results/images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localcluster import images, paths
from localcluster.images import builder, containerd, recipes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import stop_all

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "images.json"
CONFIG = 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'


def log(line: str) -> None:
    print(line, flush=True)


class Containerd:
    """A private containerd: start, ``ctr`` helpers, stop and unmount."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "c.sock"
        (base / "config.toml").write_text(CONFIG)
        self.log = open(base / "containerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml"), "--root", str(base / "root"),
             "--state", str(base / "state"), "--address", str(self.socket)],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while subprocess.run(self.ctr("version"), capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start; see {base / 'containerd.log'}")
            time.sleep(0.2)

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args]

    def run(self, image: str, cid: str, *cmd: str, timeout: float = 300) -> tuple[int, str, float]:
        t0 = time.monotonic()
        p = subprocess.run(self.ctr("run", "--rm", images.REFS[image], cid, *cmd),
                           capture_output=True, text=True, timeout=timeout, check=False)
        return p.returncode, (p.stdout + p.stderr).strip(), time.monotonic() - t0

    def stop(self) -> None:
        stop_all([self.proc], timeout_s=30)
        self.log.close()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.base))]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def pause_exit_status(c: Containerd) -> int:
    """Start the pause image, send SIGTERM once its task runs, return ctr run's exit status."""
    p = subprocess.Popen(c.ctr("run", "--rm", images.REFS["pause"], "bench-pause"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = subprocess.run(c.ctr("task", "ls"), capture_output=True, text=True).stdout
        if any(line.split()[:1] == ["bench-pause"] and "RUNNING" in line
               for line in tasks.splitlines()):
            break
        time.sleep(0.1)
    subprocess.run(c.ctr("task", "kill", "-s", "SIGTERM", "bench-pause"), check=True)
    return p.wait(30)


def layers_of(built: dict[str, builder.BuiltImage]) -> dict[str, list[dict[str, Any]]]:
    return {n: [{"layer": la.name, "size_mb": round(la.size / 1e6, 1), "cached": la.cached,
                 "build_s": round(la.seconds, 1)} for la in img.layers]
            for n, img in built.items()}


def build_and_import(c: Containerd) -> tuple[dict[str, builder.BuiltImage], list[str],
                                              float, float]:
    t0 = time.monotonic()
    built = images.build(out=log)
    t1 = time.monotonic()
    imported = containerd.import_images(c.socket, out=log, built=built)
    return built, imported, t1 - t0, time.monotonic() - t1


def source_copy(dest: Path) -> Path:
    """The files the recipes read, copied so the benchmark can edit one safely."""
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO / f, dest / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in recipes.package_dirs():
        shutil.copytree(REPO / pkg, dest / pkg, ignore=ignore)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-cache", action="store_true",
                    help="do not empty the layer cache first (the 'cold' run is then warm)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("error: run as root (image builds mount overlayfs; containerd runs as root)")
        return 1
    command = "python bench/images.py" + (" --keep-cache" * args.keep_cache)
    res: dict[str, Any] = {"command": command,
                           "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="msv-bench-images-"))
    recipes.REPO_DIR = source_copy(Path(tempfile.mkdtemp(prefix="msv-bench-src-")))
    if not args.keep_cache:
        shutil.rmtree(paths.images_dir(), ignore_errors=True)
    c = Containerd(work)
    try:
        log("== cold build + import")
        built, imported, tb, ti = build_and_import(c)
        res["cold"] = {"build_s": round(tb, 1), "import_s": round(ti, 1), "imported": imported,
                       "layers": layers_of(built),
                       "image_mb": {n: round(i.size / 1e6, 1) for n, i in built.items()},
                       "archive_mb": {n: round(i.archive.stat().st_size / 1e6, 1)
                                      for n, i in built.items()}}
        log("== checks inside containers")
        checks: dict[str, Any] = {}
        code = ("import time; t = time.monotonic(); import torch, model_server; "
                "print(torch.__version__, round(time.monotonic() - t, 2))")
        for i in (1, 2):
            rc, text, secs = c.run("model-server", f"bench-ms-{i}", "python", "-c", code)
            checks[f"model_server_import_torch_run{i}"] = {"rc": rc, "output": text,
                                                           "ctr_run_s": round(secs, 1)}
        rc, text, _ = c.run("model-server", "bench-ms-cli", "model-server", "--help")
        checks["model_server_cli"] = {"rc": rc, "output": text.splitlines()[:1]}
        rc, text, _ = c.run("operator", "bench-op", "msv-operator", "--help")
        checks["operator_help"] = {"rc": rc, "output": text.splitlines()[:1]}
        rc, text, _ = c.run("operator", "bench-op-torch", "python", "-c",
                            "import importlib.util as u; print(u.find_spec('torch') is None)")
        checks["operator_has_no_torch"] = {"rc": rc, "output": text}
        rc, text, _ = c.run("model-store", "bench-store", "python", "-c",
                            "import moto, os; print(moto.__version__, os.getuid())")
        checks["model_store"] = {"rc": rc, "output": text}
        checks["pause_sigterm_exit"] = pause_exit_status(c)
        res["checks"] = checks
        for k, v in checks.items():
            log(f"   {k}: {v}")

        log("== warm build + import (nothing changed)")
        built, imported, tb, ti = build_and_import(c)
        res["warm"] = {"build_s": round(tb, 2), "import_s": round(ti, 2), "imported": imported,
                       "rebuilt": [f"{n}/{la.name}" for n, i in built.items()
                                   for la in i.layers if not la.cached]}

        log("== one-line change in model_server/__init__.py")
        init = recipes.REPO_DIR / "model_server" / "__init__.py"
        init.write_text(init.read_text() + "# benchmark: one-line change\n")
        built, imported, tb, ti = build_and_import(c)
        rc, text, _ = c.run("model-server", "bench-ms-3", "python", "-c",
                            "import model_server, inspect; "
                            "print('one-line change' in inspect.getsource(model_server))")
        res["one_line_change"] = {
            "build_s": round(tb, 1), "import_s": round(ti, 1), "imported": imported,
            "rebuilt": [f"{n}/{la.name}" for n, i in built.items() for la in i.layers
                        if not la.cached],
            "top_layer_mb": round(built["model-server"].layers[-1].size / 1e6, 2),
            "change_visible_in_container": {"rc": rc, "output": text}}
    finally:
        c.stop()
        shutil.rmtree(recipes.REPO_DIR, ignore_errors=True)
    res["load_average_end"] = os.getloadavg()
    for k in ("cold", "warm", "one_line_change"):
        r = res[k]
        log(f"{k:>16}: build {r['build_s']} s, import {r['import_s']} s, "
            f"imported {r['imported']}, rebuilt {r.get('rebuilt', 'all')}")
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    log(f"results: {RESULTS}")
    ok = (all(v.get("rc", v) == 0 for v in res["checks"].values() if isinstance(v, dict))
          and res["checks"]["pause_sigterm_exit"] == 0
          and res["one_line_change"]["rebuilt"] == ["model-server/model_server"]
          and res["warm"]["rebuilt"] == [] and res["warm"]["imported"] == [])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
