"""Serving overhead: OIP v2 infer on an identity model vs a bare ASGI handler, side by side.

Both servers run under uvicorn (same loop/http implementation, access log off) in their own
process; the same load generator (bench/loadgen.py) drives both, alternating rounds so
machine noise hits both alike. The bare handler reads the body and returns the exact bytes
our server answers for the same request, so the difference is what our server adds:
routing, body parsing and validation, the batcher hand-off to the model thread, encoding,
metrics. Goals (issue 4): >= 0.75x the bare requests/s, <= 0.3 ms added p50 at concurrency 1.

    python bench/serving_overhead.py [--duration 3] [--rounds 3] [--out FILE]

On a shared machine requests/s move with the neighbours' load, so each run also records
the server process's CPU time per request (from /proc), which is far steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.unit.server.doubles
from loadgen import (
    Medians,
    build_request,
    cpu_seconds,
    free_port,
    result_header,
    run_load,
    wait_http,
)

HOST = "127.0.0.1"
BODY = json.dumps(
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
).encode()


def _serve_ours(port: int, max_batch_size: int, model_name: str = "identity") -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from model_server.app import create_app
    from model_server.http_server import uvicorn_options
    from model_server.settings import Settings
    from tests.unit.server.doubles import IdentityBackend

    settings = Settings(model_name=model_name, max_batch_size=max_batch_size, log_level="warning")
    app = create_app(settings, registry=CollectorRegistry(), backend=IdentityBackend())
    # as deployed: the server's own listening options (the header-timeout protocol)
    uvicorn.run(
        app, host=HOST, port=port, log_level="warning", access_log=False,
        **uvicorn_options(settings),
    )  # fmt: skip


async def _lifespan(receive: Any, send: Any) -> None:
    """Answer the ASGI lifespan protocol of uvicorn (the minimal servers have no state)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _serve_bare(port: int, response_file: str) -> None:
    import uvicorn

    payload = Path(response_file).read_bytes()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        more = True
        while more:  # consume the request body, as a real handler must
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def _serve_floor(port: int) -> None:
    """The least any OIP server must do: parse JSON, build the numpy input, encode output.

    No validation, routing, batching, metrics or error handling; shown for context only.
    """
    import orjson
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] != "POST":  # readiness probe of the benchmark
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        tensor = orjson.loads(body)["inputs"][0]
        arr = np.array(tensor["data"]).astype(np.float32).reshape(tensor["shape"])
        out = orjson.dumps(
            {
                "model_name": "identity",
                "model_version": "1",
                "outputs": [
                    {"name": "x", "datatype": "FP32", "shape": list(arr.shape),
                     "data": arr.reshape(-1)}
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )  # fmt: skip
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(out)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["ours", "bare", "floor"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--response-file")
    parser.add_argument("--model-name", default="identity")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "serving_overhead.json")
    )
    args = parser.parse_args()
    if args.serve == "ours":
        _serve_ours(args.port, args.max_batch_size, args.model_name)
        return
    if args.serve == "bare":
        _serve_bare(args.port, args.response_file)
        return
    if args.serve == "floor":
        _serve_floor(args.port)
        return

    load_at_start = os.getloadavg()
    ours_port, bare_port = free_port(), free_port()
    ours = _start(
        ["--serve", "ours", "--port", str(ours_port), "--max-batch-size", str(args.max_batch_size)]
    )
    bare: subprocess.Popen[bytes] | None = None
    floor_port = free_port()
    floor = _start(["--serve", "floor", "--port", str(floor_port)])
    try:
        wait_http(HOST, ours_port, "/v2/health/ready")
        import http.client

        conn = http.client.HTTPConnection(HOST, ours_port)
        conn.request(
            "POST",
            "/v2/models/identity/infer",
            body=BODY,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status == 200, payload
        response_file = Path(args.out).with_suffix(".response.tmp")
        response_file.parent.mkdir(parents=True, exist_ok=True)
        response_file.write_bytes(payload)
        bare = _start(
            ["--serve", "bare", "--port", str(bare_port), "--response-file", str(response_file)]
        )
        wait_http(HOST, bare_port, "/")
        response_file.unlink()
        wait_http(HOST, floor_port, "/")

        req_ours = build_request("POST", HOST, ours_port, "/v2/models/identity/infer", BODY)
        req_bare = build_request("POST", HOST, bare_port, "/v2/models/identity/infer", BODY)
        req_floor = build_request("POST", HOST, floor_port, "/v2/models/identity/infer", BODY)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"c1": [], "cN": []} for name in ("ours", "bare", "floor")
        }
        for rnd in range(args.rounds):
            for name, port, req in (
                ("bare", bare_port, req_bare),
                ("floor", floor_port, req_floor),
                ("ours", ours_port, req_ours),
            ):
                proc = {"ours": ours, "bare": bare, "floor": floor}[name]
                for key, conc in (("cN", args.concurrency), ("c1", 1)):
                    run_load(HOST, port, req, concurrency=conc, duration_s=0.3, warmup_s=0)
                    cpu0 = cpu_seconds(proc.pid)
                    res = run_load(
                        HOST, port, req, concurrency=conc, duration_s=args.duration, warmup_s=0
                    )
                    cpu1 = cpu_seconds(proc.pid)
                    assert set(res.statuses) == {200}, res.statuses
                    summary = res.summary()
                    summary["server_cpu_us_per_req"] = round((cpu1 - cpu0) / res.requests * 1e6, 1)
                    runs[name][key].append(summary)
                    print(f"round {rnd + 1} {name:4s} c={conc}: {res.summary()}", flush=True)
    finally:
        _stop(ours)
        _stop(floor)
        if bare is not None:
            _stop(bare)

    med = Medians(runs)
    result: dict[str, Any] = {
        **result_header("serving_overhead", load_at_start),
        "body_bytes": len(BODY),
        "response_bytes": len(payload),
        "concurrency": args.concurrency,
        "max_batch_size": args.max_batch_size,
    }
    for name in ("bare", "floor", "ours"):
        result[f"{name}_rps"] = med(name, "cN", "rps")
        result[f"{name}_cpu_us_per_req"] = med(name, "cN", "server_cpu_us_per_req")
        result[f"{name}_p50_ms_c1"] = med(name, "c1", "p50_ms")
    result.update(
        {
            "floor_rps_ratio": med.ratio("floor", "bare", "cN", "rps"),
            "rps_ratio": med.ratio("ours", "bare", "cN", "rps"),
            "added_p50_ms_c1": med.added("ours", "bare", "c1", "p50_ms"),
            "cpu_ratio_bare_over_ours": med.ratio("bare", "ours", "cN", "server_cpu_us_per_req"),
            "goal": {"rps_ratio": ">= 0.75", "added_p50_ms_c1": "<= 0.3"},
            "runs": runs,
        }
    )
    result["goal_met"] = result["rps_ratio"] >= 0.75 and result["added_p50_ms_c1"] <= 0.3
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nours {result['ours_rps']:.0f} req/s vs bare {result['bare_rps']:.0f} req/s "
        f"-> ratio {result['rps_ratio']:.3f} (goal >= 0.75); "
        f"p50 at c=1: ours {result['ours_p50_ms_c1']:.3f} ms, "
        f"bare {result['bare_p50_ms_c1']:.3f} ms, "
        f"added {result['added_p50_ms_c1']:.3f} ms (goal <= 0.3); "
        f"server CPU per request: ours {result['ours_cpu_us_per_req']:.1f} us, "
        f"bare {result['bare_cpu_us_per_req']:.1f} us; minimal parse+encode handler "
        f"{result['floor_rps']:.0f} req/s ({result['floor_rps_ratio']:.3f}x bare, "
        f"{result['floor_cpu_us_per_req']:.1f} us)"
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
