"""Image builder, per image, end to end on a private containerd: size, cold build, import,
the framework's import in a container, and the rebuild after a one-line change.

1. cold: empties the layer cache (``$MSV_CACHE/images``), then builds the images one after
   the other (the model-server image of each runtime first, then operator, model-store,
   pause), timing each: an image that shares layers with an earlier one pays only for its
   own (the second runtime image: its framework layer and the top layer); then imports each
   into a containerd started by this script (its own root, state and socket in a temp dir;
   CRI off), timing each;
2. checks inside containers (``ctr run``, no network): each runtime image imports its own
   framework and model_server (timed, twice: the second run has the page cache warm) and
   does not have the other runtimes' frameworks; the operator image has no ML framework;
   the model-store image imports moto; the pause container exits 0 on SIGTERM;
3. warm: the same builds + imports again (goal: nothing rebuilt or imported);
4. a one-line change in a model_server file (in a copy of the sources): each runtime image
   rebuilds only its top layer; rebuild and import timed per image.

Then it stops that containerd and removes its mounts and files.

    python bench/images.py [--keep-cache] [NAME...]     # as root

Results: bench/results/images.json; a table per image on stdout.
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
from msv_contract import capabilities as caps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import stop_all

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "images.json"
CONFIG = 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
DEFAULT_IMAGES = (*recipes.RUNTIME_IMAGES, "operator", "model-store", "pause")
FRAMEWORK_MODULE = {"torch": "torch", "tensorflow": "tensorflow"}
"""The module a runtime's image must import (and the others must not have)."""


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

    def run(self, image: str, cid: str, *cmd: str, timeout: float = 300,
            stdout_only: bool = False) -> tuple[int, str, float]:
        """Run ``cmd`` in a container of ``image``: (exit code, output, seconds); with
        ``stdout_only`` the output leaves out stderr (TensorFlow logs its start there)."""
        t0 = time.monotonic()
        p = subprocess.run(self.ctr("run", "--rm", images.REFS[image], cid, *cmd),
                           capture_output=True, text=True, timeout=timeout, check=False)
        text = p.stdout if stdout_only and p.returncode == 0 else p.stdout + p.stderr
        return p.returncode, text.strip(), time.monotonic() - t0

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


def build_each(names: list[str]) -> tuple[dict[str, builder.BuiltImage], dict[str, Any]]:
    """Build ``names`` one after the other; per image its seconds and which layers it made,
    took from an earlier image of this run, or found in the cache."""
    memo: dict[str, Any] = {}
    built: dict[str, builder.BuiltImage] = {}
    per: dict[str, Any] = {}
    for n in names:
        before = set(memo)
        t0 = time.monotonic()
        img = builder.build_image(n, log, memo)
        seconds = time.monotonic() - t0
        built[n] = img
        per[n] = {
            "build_s": round(seconds, 1), "size_mb": round(img.size / 1e6, 1),
            "archive_mb": round(img.archive.stat().st_size / 1e6, 1),
            "layers": [{"layer": la.name, "size_mb": round(la.size / 1e6, 1),
                        "how": ("shared" if la.key in before else
                                "cached" if la.cached else "built"),
                        "build_s": round(la.seconds, 1)} for la in img.layers]}
    builder.prune_layers(log)
    return built, per


def import_each(c: Containerd, built: dict[str, builder.BuiltImage],
                per: dict[str, Any]) -> list[str]:
    imported: list[str] = []
    for n, img in built.items():
        t0 = time.monotonic()
        imported += containerd.import_images(c.socket, [n], out=log, built={n: img})
        per[n]["import_s"] = round(time.monotonic() - t0, 1)
    return imported


def runtime_checks(c: Containerd, name: str, run: int) -> dict[str, Any]:
    """Import the runtime's framework and model_server (timed); the others are absent."""
    own = FRAMEWORK_MODULE[recipes.RUNTIME_IMAGES[name]]
    others = sorted(set(FRAMEWORK_MODULE.values()) - {own})
    code = (f"import time, importlib.util as u; t = time.monotonic(); import {own}, model_server; "
            f"print({own}.__version__, round(time.monotonic() - t, 2), "
            f"[m for m in {others!r} if u.find_spec(m) is not None])")
    rc, text, secs = c.run(name, f"bench-{name}-{run}", "python", "-c", code, stdout_only=True)
    return {"rc": rc, "output": text.splitlines()[-1:] if text else [], "ctr_run_s": round(secs, 1)}


def source_copy(dest: Path) -> Path:
    """The files the recipes read, copied so the benchmark can edit one safely."""
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO / f, dest / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in recipes.package_dirs():
        shutil.copytree(REPO / pkg, dest / pkg, ignore=ignore)
    return dest


def table(res: dict[str, Any]) -> list[str]:
    lines = ["| image | size | cold build | import | framework import (2nd run) "
             "| one-line change: rebuild + import |", "|---|---|---|---|---|---|"]
    for n, cold in res["cold"]["images"].items():
        fw = res["checks"].get(f"{n}_run2", {}).get("output", [""])
        fw_s = fw[0].split()[1] + " s" if fw and len(fw[0].split()) > 1 else "-"
        change = res["one_line_change"]["images"].get(n, {})
        lines.append(f"| {n} | {cold['size_mb']:,.1f} MB | {cold['build_s']} s "
                     f"| {cold.get('import_s', '-')} s | {fw_s} "
                     f"| {change.get('build_s', '-')} s + {change.get('import_s', '-')} s |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"images to measure (default: {', '.join(DEFAULT_IMAGES)})")
    ap.add_argument("--keep-cache", action="store_true",
                    help="do not empty the layer cache first (the 'cold' run is then warm)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("error: run as root (image builds mount overlayfs; containerd runs as root)")
        return 1
    names = builder.select_names(args.names or DEFAULT_IMAGES)
    command = " ".join(["python bench/images.py", *(["--keep-cache"] * args.keep_cache),
                        *args.names])
    res: dict[str, Any] = {"command": command, "images": names,
                           "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="msv-bench-images-"))
    recipes.REPO_DIR = source_copy(Path(tempfile.mkdtemp(prefix="msv-bench-src-")))
    if not args.keep_cache:
        shutil.rmtree(paths.images_dir(), ignore_errors=True)
    c = Containerd(work)
    try:
        log("== cold build + import, image by image")
        t0 = time.monotonic()
        built, per = build_each(names)
        build_s = time.monotonic() - t0
        t0 = time.monotonic()
        imported = import_each(c, built, per)
        res["cold"] = {"build_s": round(build_s, 1), "import_s": round(time.monotonic() - t0, 1),
                       "imported": imported, "images": per}

        log("== checks inside containers")
        checks: dict[str, Any] = {}
        for n in names:
            if n in recipes.RUNTIME_IMAGES:
                for i in (1, 2):
                    checks[f"{n}_run{i}"] = runtime_checks(c, n, i)
                rc, text, _ = c.run(n, f"bench-{n}-cli", "model-server", "--help")
                checks[f"{n}_cli"] = {"rc": rc, "output": text.splitlines()[:1]}
        if "operator" in names:
            rc, text, _ = c.run("operator", "bench-op", "msv-operator", "--help")
            checks["operator_help"] = {"rc": rc, "output": text.splitlines()[:1]}
            rc, text, _ = c.run("operator", "bench-op-ml", "python", "-c",
                                "import importlib.util as u; print([m for m in "
                                f"{sorted(FRAMEWORK_MODULE.values())!r} "
                                "if u.find_spec(m) is not None])")
            checks["operator_has_no_framework"] = {"rc": rc, "output": text}
        if "model-store" in names:
            rc, text, _ = c.run("model-store", "bench-store", "python", "-c",
                                "import moto, os; print(moto.__version__, os.getuid())")
            checks["model_store"] = {"rc": rc, "output": text}
        if "pause" in names:
            checks["pause_sigterm_exit"] = {"rc": pause_exit_status(c)}
        res["checks"] = checks
        for k, v in checks.items():
            log(f"   {k}: {v}")

        log("== warm build + import (nothing changed)")
        t0 = time.monotonic()
        built, _ = build_each(names)
        tb = time.monotonic() - t0
        t0 = time.monotonic()
        imported = containerd.import_images(c.socket, names, out=log, built=built)
        res["warm"] = {"build_s": round(tb, 2), "import_s": round(time.monotonic() - t0, 2),
                       "imported": imported,
                       "rebuilt": [f"{n}/{la.name}" for n, i in built.items()
                                   for la in i.layers if not la.cached]}

        log("== one-line change in model_server/__init__.py")
        init = recipes.REPO_DIR / "model_server" / "__init__.py"
        init.write_text(init.read_text() + "# benchmark: one-line change\n")
        t0 = time.monotonic()
        built, per = build_each(names)
        tb = time.monotonic() - t0
        t0 = time.monotonic()
        imported = import_each(c, built, per)
        visible = {}
        for n in names:
            if n in recipes.RUNTIME_IMAGES:
                rc, text, _ = c.run(n, f"bench-{n}-3", "python", "-c",
                                    "import model_server, inspect; "
                                    "print('one-line change' in inspect.getsource(model_server))",
                                    stdout_only=True)
                visible[n] = {"rc": rc, "output": text}
        res["one_line_change"] = {
            "build_s": round(tb, 1), "import_s": round(time.monotonic() - t0, 1),
            "imported": imported, "images": per,
            "rebuilt": [f"{n}/{la.name}" for n, i in built.items() for la in i.layers
                        if not la.cached],
            "change_visible_in_container": visible}
    finally:
        c.stop()
        shutil.rmtree(recipes.REPO_DIR, ignore_errors=True)
    res["load_average_end"] = os.getloadavg()
    for k in ("cold", "warm", "one_line_change"):
        r = res[k]
        log(f"{k:>16}: build {r['build_s']} s, import {r['import_s']} s, "
            f"imported {r['imported']}, rebuilt {r.get('rebuilt', 'all')}")
    res["table"] = table(res)
    for line in res["table"]:
        log(line)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    log(f"results: {RESULTS}")
    runtimes = [n for n in names if n in recipes.RUNTIME_IMAGES]
    ok = (all(v.get("rc") == 0 for v in res["checks"].values())
          and all(c_["output"] and c_["output"][0].endswith("[]")
                  for k, c_ in res["checks"].items() if k.endswith(("_run1", "_run2")))
          and sorted(res["one_line_change"]["rebuilt"]) == sorted(
              f"{n}/model_server" for n in runtimes)
          and all(v["output"] == "True"
                  for v in res["one_line_change"]["change_visible_in_container"].values())
          and res["warm"]["rebuilt"] == [] and res["warm"]["imported"] == [])
    return 0 if ok else 1


if __name__ == "__main__":
    assert set(FRAMEWORK_MODULE) == set(caps.RUNTIME_NAMES), "name each runtime's module"
    sys.exit(main())
