"""Dynamic batching on vs off: a small BERT-class text classifier at 16 clients and at 1.

Builds a small transformer classifier with tests/modelfactory.py (random weights: only
speed is measured here), starts `model-server serve` twice on it — batching on
(max batch 16, max delay 2 ms) and off (max batch 1) — with one torch thread each, and
drives both with the same closed-loop load generator, alternating rounds. Goals (issue 4):
>= 1.8x requests/s at 16 clients with p99 <= 1.5x the unbatched p99, and <= 1 ms added p50
at one client (no idle penalty).

    python bench/batching.py [--duration 4] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from loadgen import (  # noqa: E402
    Medians,
    build_request,
    cpu_seconds,
    free_port,
    run_load,
    stop_all,
    wait_http,
)

HOST = "127.0.0.1"
WORDS = [
    "the",
    "movie",
    "was",
    "really",
    "very",
    "good",
    "but",
    "the",
    "food",
    "service",
    "was",
    "quite",
    "bad",
    "and",
    "slow",
]


def body_for(i: int, words: int) -> bytes:
    text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
    req = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    return json.dumps(req).encode()


def batch_totals(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    import urllib.request

    total = count = 0.0
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("model_server_batch_size_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("model_server_batch_size_count"):
                count = float(line.rsplit(" ", 1)[1])
    return total, count


def start_server(
    model_dir: Path,
    port: int,
    max_batch: int,
    delay_ms: float,
    *flags: str,
    env: dict[str, str] | None = None,
    nice: int = 0,
) -> Any:
    """`model-server serve` on the classifier, one torch thread (+ flags, env; at `nice`)."""
    cmd = [
        *(["nice", "-n", str(nice)] if nice else []),
        sys.executable, "-m", "model_server", "serve",
        "--model-dir", str(model_dir), "--task", "text-classification",
        "--host", HOST, "--port", str(port), "--torch-threads", "1",
        "--max-batch-size", str(max_batch), "--max-delay-ms", str(delay_ms),
        "--log-level", "warning", *flags,
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=HERE.parent, env={**os.environ, **(env or {})})


def build_classifier(model_dir: Path, hidden: int, layers: int, words: int) -> dict[str, Any]:
    """The benchmark's BERT-class classifier (random init) in `model_dir`; its description
    for the results."""
    from modelfactory import make_text_classifier

    model = make_text_classifier(
        model_dir,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        intermediate_size=4 * hidden,
    )
    return {
        "kind": "BERT-class text classifier (random init)",
        "hidden": hidden,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "words_per_request": words,
        "torch_threads": 1,
    }


def measure(port: int, pid: int, req: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    """One run after a 0.5 s warm-up: the load summary, the mean batch size and the server
    process's CPU time per request; every answer must be 200."""
    run_load(HOST, port, req, concurrency=concurrency, duration_s=0.5, warmup_s=0)
    sum0, count0 = batch_totals(port)
    cpu0 = cpu_seconds(pid)
    res = run_load(HOST, port, req, concurrency=concurrency, duration_s=duration_s, warmup_s=0)
    cpu1 = cpu_seconds(pid)
    sum1, count1 = batch_totals(port)
    assert set(res.statuses) == {200}, res.statuses
    summary = res.summary()
    summary["mean_batch_size"] = round((sum1 - sum0) / max(count1 - count0, 1), 2)
    summary["server_cpu_ms_per_req"] = round((cpu1 - cpu0) / max(res.requests, 1) * 1e3, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--words", type=int, default=24, help="words per request text")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "batching.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        model_dir = Path(tmp) / "classifier"
        model = build_classifier(model_dir, args.hidden, args.layers, args.words)
        ports = {"on": free_port(), "off": free_port()}
        procs = {
            "on": start_server(model_dir, ports["on"], args.max_batch_size, args.max_delay_ms),
            "off": start_server(model_dir, ports["off"], 1, 0.0),
        }
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {"cN": [], "c1": []} for k in procs}
        try:
            for port in ports.values():
                wait_http(HOST, port, "/v2/health/ready", timeout_s=180)
            body = body_for(0, args.words)
            for rnd in range(args.rounds):
                for name in ("off", "on"):
                    port = ports[name]
                    req = build_request("POST", HOST, port, "/v2/models/model/infer", body)
                    for key, conc in (("cN", args.clients), ("c1", 1)):
                        summary = measure(port, procs[name].pid, req, conc, args.duration)
                        runs[name][key].append(summary)
                        print(f"round {rnd + 1} batching {name:3s} c={conc}: {summary}", flush=True)
        finally:
            stop_all(procs.values())

    med = Medians(runs)
    result = {
        "benchmark": "batching",
        "command": "python bench/batching.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "model": model,
        "clients": args.clients,
        "max_batch_size": args.max_batch_size,
        "max_delay_ms": args.max_delay_ms,
        "mean_batch_size_on": med("on", "cN", "mean_batch_size"),
        "rps_on": med("on", "cN", "rps"),
        "rps_off": med("off", "cN", "rps"),
        "rps_ratio": med.ratio("on", "off", "cN", "rps"),
        "p99_ms_on": med("on", "cN", "p99_ms"),
        "p99_ms_off": med("off", "cN", "p99_ms"),
        "p99_ratio": med.ratio("on", "off", "cN", "p99_ms"),
        "p50_ms_c1_on": med("on", "c1", "p50_ms"),
        "p50_ms_c1_off": med("off", "c1", "p50_ms"),
        "added_p50_ms_c1": med.added("on", "off", "c1", "p50_ms"),
        "goal": {"rps_ratio": ">= 1.8", "p99_ratio": "<= 1.5", "added_p50_ms_c1": "<= 1.0"},
        "runs": runs,
    }
    result["goal_met"] = (
        result["rps_ratio"] >= 1.8
        and result["p99_ratio"] <= 1.5
        and result["added_p50_ms_c1"] <= 1.0
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{args.clients} clients: batching on {result['rps_on']:.0f} req/s vs off "
        f"{result['rps_off']:.0f} req/s -> {result['rps_ratio']:.2f}x (goal >= 1.8); "
        f"p99 {result['p99_ms_on']:.1f} vs {result['p99_ms_off']:.1f} ms -> "
        f"{result['p99_ratio']:.2f}x (goal <= 1.5); mean batch {result['mean_batch_size_on']}; "
        f"1 client: added p50 {result['added_p50_ms_c1']:.3f} ms (goal <= 1)"
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
