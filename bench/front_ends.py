"""Front ends side by side: REST before/after the request-path refactor, gRPC vs REST, and the
cost of authentication and TLS — one run, one identity model, interleaved rounds.

Servers (each its own uvicorn process on loopback, access log off, batching as default):

- `before`: the REST server of git ref `--before` (default `main`), exported with
  `git archive` into a temporary directory and run from there;
- `rest`: this tree's REST front end;
- `auth`: the same with bearer-token authentication on (the load sends the token);
- `tls`: the same over TLS (ECDSA P-256 certificate; the load reuses its connections, as
  keep-alive clients do, so the handshake is not in the per-request cost);
- `grpc`: this tree's OIP v2 gRPC front end (`ModelInfer`), REST port unused;
- `grpc_floor`: a bare `grpc.aio` server answering ModelInfer with the request bytes (no
  protobuf parsing, no model): what grpcio's Python server costs per call by itself;
- `kserve_grpc`: KServe 0.21's ModelServer with its OIP v2 gRPC server on the same identity
  model (bench/peer_servers.py, from the peer venv that bench/README.md describes; skipped
  and recorded when that venv is missing).

HTTP load: bench/loadgen.py (raw asyncio streams, keep-alive). gRPC load: a `grpc.aio`
channel sending the same pre-serialized ModelInferRequest with `concurrency` calls in
flight (tritonclient would cost the shared CPUs more than the servers do). Each side is
measured at concurrency N (requests/s) and 1 (p50 latency) in every round; medians over
rounds are compared.

    python bench/front_ends.py [--duration 3] [--rounds 3] [--concurrency 8] [--before main]
                               [--only before,rest]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from loadgen import (  # noqa: E402
    Medians,
    build_request,
    cpu_seconds,
    free_port,
    result_header,
    run_load,
    stop_all,
    wait_http,
)

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789abcdef"
DATA = [float(i) for i in range(16)]
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": DATA}]}
).encode()
INFER_PATH = "/v2/models/identity/infer"
SERVICE = "inference.GRPCInferenceService"
SIDES = ("before", "rest", "auth", "tls", "grpc", "grpc_floor", "kserve_grpc")
KSERVE_PYTHON = (
    Path(os.environ.get("BENCH_VENVS", "~/.cache/modelservice/bench-venvs")).expanduser()
    / "kserve"
    / "bin"
    / "python"
)


def _serve(args: argparse.Namespace) -> None:
    """A server process: `--root` (default: this tree) first on sys.path, then uvicorn."""
    sys.path.insert(0, args.root)
    import uvicorn
    from prometheus_client import CollectorRegistry

    from model_server.app import create_app
    from model_server.settings import Settings
    from tests.unit.server.doubles import IdentityBackend

    overrides = json.loads(args.settings)
    settings = Settings(model_name="identity", log_level="warning", **overrides)
    app = create_app(settings, registry=CollectorRegistry(), backend=IdentityBackend())
    try:  # the tree's own listening options, as deployed
        from model_server.http_server import uvicorn_options
    except ImportError:  # a ref from before model_server.http_server: uvicorn's defaults
        options: dict[str, Any] = {}
    else:
        options = uvicorn_options(settings)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False, **options)


def _serve_grpc_floor(port: int) -> None:
    import grpc

    async def run() -> None:
        server = grpc.aio.server()

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
        )
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def _export(ref: str, into: Path) -> Path:
    """The model server and test doubles of git `ref`, unpacked under `into`."""
    archive = into / "src.tar"
    with archive.open("wb") as fh:
        subprocess.run(
            ["git", "archive", ref, "model_server",
             "tests/unit/server/__init__.py", "tests/unit/server/doubles.py"],
            cwd=ROOT, stdout=fh, check=True,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def _grpc_request() -> bytes:
    from model_server.grpc_api.schema import message

    request = message("ModelInferRequest")(model_name="identity")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    tensor.contents.fp32_contents.extend(DATA)
    return bytes(request.SerializeToString())


def _grpc_load(port: int, body: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    import grpc

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/ModelInfer")
            stop_at = time.perf_counter() + duration_s

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        await call(body)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        latencies.sort()
        return {
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 3),
            "requests": len(latencies),
            "errors": errors,
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--serve-grpc-floor", action="store_true")
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--port", type=int)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--before", default="main")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", default=",".join(SIDES), help="comma-separated sides")
    parser.add_argument("--out", default=str(HERE / "results" / "front_ends.json"))
    args = parser.parse_args()
    if args.serve:
        _serve(args)
        return
    if args.serve_grpc_floor:
        _serve_grpc_floor(args.port)
        return
    names = [n for n in SIDES if n in args.only.split(",")]
    missing: dict[str, str] = {}
    if "kserve_grpc" in names and not KSERVE_PYTHON.exists():
        names.remove("kserve_grpc")
        missing["kserve_grpc"] = f"no KServe venv at {KSERVE_PYTHON.parent.parent.name}"

    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="front-ends-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        before_root = _export(args.before, tmp)
        sys.path.insert(0, str(ROOT))
        from tests.unit.server.certs import write_tls_secret

        secret = write_tls_secret(tmp / "tls")
        (tmp / "tokens").write_text(TOKEN)
        ports = {name: free_port() for name in SIDES}
        grpc_port = free_port()
        kserve_grpc_port = free_port()
        grpc_ports = {
            "grpc": grpc_port,
            "grpc_floor": ports["grpc_floor"],
            "kserve_grpc": kserve_grpc_port,
        }
        configs: dict[str, tuple[str, dict[str, Any]]] = {
            "before": (str(before_root), {}),
            "rest": (str(ROOT), {}),
            "auth": (str(ROOT), {"auth_tokens": str(tmp / "tokens")}),
            "tls": (
                str(ROOT),
                {"tls_cert_file": str(secret / "tls.crt"), "tls_key_file": str(secret / "tls.key")},
            ),
            "grpc": (str(ROOT), {"grpc_port": grpc_port}),
        }
        for name, (root, settings) in configs.items():
            if name in names:
                procs[name] = subprocess.Popen(
                    [sys.executable, __file__, "--serve", "--root", root,
                     "--port", str(ports[name]), "--settings", json.dumps(settings)]
                )  # fmt: skip
        if "grpc_floor" in names:
            procs["grpc_floor"] = subprocess.Popen(
                [sys.executable, __file__, "--serve-grpc-floor", "--port", str(ports["grpc_floor"])]
            )
        if "kserve_grpc" in names:
            procs["kserve_grpc"] = subprocess.Popen(
                [str(KSERVE_PYTHON), str(HERE / "peer_servers.py"), "kserve-grpc",
                 str(ports["kserve_grpc"]), str(kserve_grpc_port)]
            )  # fmt: skip
        for name in ("before", "rest", "auth", "grpc", "kserve_grpc"):
            if name in names:
                wait_http(HOST, ports[name], "/v2/health/ready")
        client_tls = ssl.create_default_context(cafile=str(secret / "ca.crt"))
        deadline = time.monotonic() + 60
        while "tls" in names:
            try:
                import urllib.request

                with urllib.request.urlopen(
                    f"https://{HOST}:{ports['tls']}/v2/health/ready", context=client_tls, timeout=2
                ) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        requests = {
            name: build_request(
                "POST", HOST, ports[name], INFER_PATH, BODY,
                {"Authorization": f"Bearer {TOKEN}"} if name == "auth" else None,
            )
            for name in ("before", "rest", "auth", "tls")
        }  # fmt: skip
        grpc_body = _grpc_request()
        if "grpc_floor" in names:  # up when it answers
            while True:
                try:
                    _grpc_load(ports["grpc_floor"], grpc_body, 1, 0.1)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"c1": [], "cN": []} for n in names}
        for rnd in range(args.rounds):
            for name in names:
                for key, conc in (("cN", args.concurrency), ("c1", 1)):
                    cpu0 = cpu_seconds(procs[name].pid)
                    if name in grpc_ports:
                        _grpc_load(grpc_ports[name], grpc_body, conc, 0.3)
                        cpu0 = cpu_seconds(procs[name].pid)
                        summary = _grpc_load(grpc_ports[name], grpc_body, conc, args.duration)
                        assert summary["errors"] == 0, summary
                    else:
                        tls = client_tls if name == "tls" else None
                        port, req = ports[name], requests[name]
                        run_load(HOST, port, req, concurrency=conc, duration_s=0.3, warmup_s=0,
                                 tls=tls)  # fmt: skip
                        cpu0 = cpu_seconds(procs[name].pid)
                        res = run_load(
                            HOST, port, req, concurrency=conc, duration_s=args.duration,
                            warmup_s=0, tls=tls,
                        )  # fmt: skip
                        assert set(res.statuses) == {200}, (name, res.statuses)
                        summary = res.summary()
                    cpu1 = cpu_seconds(procs[name].pid)
                    summary["server_cpu_us_per_req"] = round(
                        (cpu1 - cpu0) / max(1, summary["requests"]) * 1e6, 1
                    )
                    runs[name][key].append(summary)
                    print(f"round {rnd + 1} {name:6s} c={conc}: {summary}", flush=True)
    finally:
        stop_all(procs.values(), timeout_s=10)
        shutil.rmtree(tmp, ignore_errors=True)

    med = Medians(runs)
    result: dict[str, Any] = {
        **result_header("front_ends", load_at_start),
        "before_ref": args.before,
        "concurrency": args.concurrency,
        "body_bytes": len(BODY),
    }
    for name in names:
        result[f"{name}_rps"] = med(name, "cN", "rps")
        result[f"{name}_p50_ms_c1"] = med(name, "c1", "p50_ms")
        result[f"{name}_cpu_us_per_req"] = med(name, "cN", "server_cpu_us_per_req")
    pairs = {
        "rest_after_over_before": ("rest", "before"),
        "grpc_over_rest": ("grpc", "rest"),
        "grpc_over_grpc_floor": ("grpc", "grpc_floor"),
        "grpc_over_kserve_grpc": ("grpc", "kserve_grpc"),
        "auth_over_off": ("auth", "rest"),
        "tls_over_off": ("tls", "rest"),
    }
    result["ratios"] = {}
    for label, (a, b) in pairs.items():
        if a in names and b in names:
            result["ratios"][f"{label}_rps"] = med.ratio(a, b, "cN", "rps")
            result["ratios"][f"{label}_p50_c1"] = med.ratio(a, b, "c1", "p50_ms")
            result["ratios"][f"{label}_cpu_per_req"] = med.ratio(
                a, b, "cN", "server_cpu_us_per_req"
            )
    result["missing"] = missing
    result["goal"] = {
        "grpc_over_kserve_grpc_rps": ">= 1.3",
        "rest_after_over_before_cpu_per_req": "<= 1.03 (the refactor costs nothing)",
    }
    result["runs"] = runs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print()
    for name in names:
        print(
            f"{name:6s} {result[f'{name}_rps']:8.0f} req/s (c={args.concurrency})  "
            f"p50 {result[f'{name}_p50_ms_c1']:.3f} ms (c=1)  "
            f"server CPU {result[f'{name}_cpu_us_per_req']:.0f} us/req"
        )
    print(json.dumps(result["ratios"], indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
