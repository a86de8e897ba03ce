"""Our server vs KServe's python ModelServer and LitServe, same model, same load, one run.

Workloads (each server started alone, measured, stopped, so none competes with another;
`--rounds` repeats the whole sequence so background load hits every server alike, and the
median per server is reported):
- `classifier`: a small BERT-class text classifier from tests/modelfactory.py (the same
  directory for every server; all run tokenizer + forward + softmax with one torch thread),
  16 closed-loop clients sending one sentence each;
- `identity`: FP32 [1, 16] in, the same out (pure serving overhead), 8 clients.

Servers: ours (`model-server serve`; for the classifier with max batch 16 and max delay
2 ms, the same limits as LitServe's batched configuration below), KServe
0.21 `ModelServer` (its defaults; KServe batches only in a separate agent), LitServe 0.2.19
with its defaults (no batching) and, for the classifier, with batching enabled
(max_batch_size 16, batch_timeout 2 ms) so the comparison is not only against defaults.
The peers run from their own virtualenvs (bench/README.md shows how they are made); a
peer that is not installed is recorded with the reason instead of a number. Goal
(issue 4): >= 1.3x the better peer's requests/s.

    python bench/peers.py [--duration 5] [--workloads classifier,identity] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from loadgen import build_request, cpu_seconds, free_port, run_load, wait_http  # noqa: E402

HOST = "127.0.0.1"
VENVS = Path(os.environ.get("BENCH_VENVS", "~/.cache/modelservice/bench-venvs")).expanduser()
TEXT = "the movie was really very good but the food service was quite bad and slow today"
BODIES = {
    "classifier": json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
    ).encode(),
    "identity": json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "data": [float(i) for i in range(16)],
                }
            ]
        }
    ).encode(),
}
EXPECT = {"classifier": b'"label"', "identity": b'"outputs"'}


def peer_python(peer: str) -> Path | None:
    exe = VENVS / peer / "bin" / "python"
    return exe if exe.exists() else None


def server_cmd(server: str, port: int, workload: str, model_dir: Path) -> tuple[list[str], str]:
    """Command line and readiness path for one server."""
    target = str(model_dir) if workload == "classifier" else "identity"
    if server == "ours":
        if workload == "identity":
            cmd = [sys.executable, str(HERE / "serving_overhead.py"), "--serve", "ours"]
            return [*cmd, "--port", str(port), "--model-name", "model"], "/v2/health/ready"
        return [
            sys.executable, "-m", "model_server", "serve", "--model-dir", target,
            "--task", "text-classification", "--host", HOST, "--port", str(port),
            "--torch-threads", "1", "--log-level", "warning",
            "--max-batch-size", "16", "--max-delay-ms", "2",
        ], "/v2/health/ready"  # fmt: skip
    peer, _, variant = server.partition("-")
    exe = peer_python(peer)
    assert exe is not None
    cmd = [str(exe), str(HERE / "peer_servers.py"), peer, str(port), target]
    if variant == "batch16":
        cmd += ["--batch", "16"]
    return cmd, "/v2/health/ready" if peer == "kserve" else "/health"


def measure(
    server: str, workload: str, model_dir: Path, clients: int, duration: float
) -> dict[str, Any]:
    port = free_port()
    cmd, ready = server_cmd(server, port, workload, model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=HERE.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                wait_http(HOST, port, ready, timeout_s=1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

        body = BODIES[workload]
        req = urllib.request.Request(
            f"http://{HOST}:{port}/v2/models/model/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            sample = resp.read()
        assert EXPECT[workload] in sample, sample[:300]
        wire = build_request("POST", HOST, port, "/v2/models/model/infer", body)
        run_load(HOST, port, wire, concurrency=clients, duration_s=1.0, warmup_s=0)
        cpu0 = _tree_cpu(proc.pid)
        res = run_load(HOST, port, wire, concurrency=clients, duration_s=duration, warmup_s=0)
        cpu1 = _tree_cpu(proc.pid)
        summary = res.summary()
        summary["server_cpu_ms_per_req"] = round((cpu1 - cpu0) / max(res.requests, 1) * 1e3, 3)
        summary["sample_response_bytes"] = len(sample)
        return summary
    except Exception as exc:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-1500:]
        return {"error": f"{type(exc).__name__}: {exc}", "log_tail": tail}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        log.close()
        time.sleep(1.0)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (LitServe runs worker processes)."""
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            total += cpu_seconds(p)
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pending.extend(int(c) for c in children)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--workloads", default="classifier,identity")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "peers.json"))
    args = parser.parse_args()

    from modelfactory import make_text_classifier

    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    for peer in ("kserve", "litserve"):
        exe = peer_python(peer)
        if exe is None:
            missing[peer] = f"no virtualenv at {VENVS / peer} (see bench/README.md)"
            continue
        out = subprocess.run(
            [str(exe), "-c", f"import importlib.metadata as m; print(m.version('{peer}'))"],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            missing[peer] = f"{peer} not importable: {out.stderr.strip()[-300:]}"
        else:
            versions[peer] = out.stdout.strip()

    workloads = {"classifier": 16, "identity": 8}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        model_dir = Path(tmp) / "classifier"
        make_text_classifier(model_dir, hidden_size=128, num_layers=2, num_heads=4,
                             intermediate_size=512)  # fmt: skip
        for workload in args.workloads.split(","):
            clients = workloads[workload]
            servers = ["ours"] + [
                s
                for s in ("kserve", "litserve", "litserve-batch16")
                if s.partition("-")[0] in versions
                and not (workload == "identity" and s == "litserve-batch16")
            ]
            results[workload] = {"clients": clients, "servers": {}, "rounds": {}}
            for rnd in range(args.rounds):
                for server in servers:
                    summary = measure(server, workload, model_dir, clients, args.duration)
                    results[workload]["rounds"].setdefault(server, []).append(summary)
                    print(f"round {rnd + 1} {workload:10s} {server:17s} {summary}", flush=True)
            for server, runs in results[workload]["rounds"].items():
                good = [r for r in runs if "rps" in r]
                if not good:
                    results[workload]["servers"][server] = runs[-1]
                    continue
                results[workload]["servers"][server] = {
                    key: statistics.median(r[key] for r in good)
                    for key in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req")
                }
            got = results[workload]["servers"]
            ours = got["ours"].get("rps", 0.0)
            peers = {k: v["rps"] for k, v in got.items() if k != "ours" and "rps" in v}
            if peers:
                best = max(peers, key=lambda k: peers[k])
                results[workload]["best_peer"] = best
                results[workload]["ratio_vs_best_peer"] = round(ours / peers[best], 3)
                results[workload]["cpu_per_request_best_peer_over_ours"] = round(
                    got[best]["server_cpu_ms_per_req"] / got["ours"]["server_cpu_ms_per_req"], 3
                )
                results[workload]["goal_met"] = ours / peers[best] >= 1.3

    result = {
        "benchmark": "peers",
        "command": "python bench/peers.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "peer_versions": versions,
        "peers_missing": missing,
        "goal": "ours >= 1.3x the better peer's requests/s",
        "workloads": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print()
    for workload, res in results.items():
        line = ", ".join(
            f"{k} {v['rps']:.0f} req/s (p99 {v['p99_ms']:.1f} ms)" if "rps" in v else f"{k} failed"
            for k, v in res["servers"].items()
        )
        ratio = res.get("ratio_vs_best_peer")
        print(f"{workload} @ {res['clients']} clients: {line}; ours / best peer = {ratio}")
    for peer, why in missing.items():
        print(f"{peer}: not measured: {why}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
