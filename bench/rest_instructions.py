"""REST infer cost in CPU instructions per request, side by side: before/after and bare ASGI.

Timings on a shared machine wander by 10-20% between runs; instruction counts do not. Each
server runs under valgrind's callgrind (uvicorn, access log off, one process each):

- `before`: the REST server of git ref `--before`, exported like bench/front_ends.py does;
- `rest`: this tree's REST server, as bench/front_ends.py runs it;
- `bare`: bench/serving_overhead.py's bare ASGI handler answering the very same bytes.

For each round and server: a warm-up, then the server's instruction counter (all threads,
read with `callgrind_control -e`) before and after `--requests` infer requests from
bench/loadgen.py at `--concurrency`; the difference over the requests answered is the
count per request (uvicorn and the event loop included). Medians over rounds are compared.

    python bench/rest_instructions.py [--before 80a9e3c] [--requests 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from front_ends import BODY, HOST, INFER_PATH, _export  # noqa: E402
from loadgen import build_request, free_port, result_header, run_load, stop_all, wait_http  # noqa: E402

SIDES = ("before", "rest", "bare")


def _instructions(pid: int) -> int:
    """Instructions executed so far by the callgrind-run process `pid` (all its threads)."""
    out = subprocess.run(
        ["callgrind_control", "-e", "Ir", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    counts = re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", out, re.MULTILINE)
    if not counts:
        raise RuntimeError(f"no callgrind counters for pid {pid}: {out!r}")
    return sum(int(c.replace(",", "")) for c in counts)


def _valgrind(args: list[str], out_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", sys.executable, *args],
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "rest_instructions.json"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind (callgrind and callgrind_control)")

    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="rest-instructions-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: free_port() for name in SIDES}
    try:
        before_root = _export(args.before, tmp)
        for name, root in (("before", before_root), ("rest", HERE.parent)):
            procs[name] = _valgrind(
                [str(HERE / "front_ends.py"), "--serve", "--root", str(root),
                 "--port", str(ports[name])],
                tmp / f"{name}.callgrind",
            )  # fmt: skip
        for name in ("before", "rest"):
            wait_http(HOST, ports[name], "/v2/health/ready", timeout_s=600)
        import http.client

        conn = http.client.HTTPConnection(HOST, ports["rest"], timeout=60)
        conn.request("POST", INFER_PATH, body=BODY, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status == 200, payload
        (tmp / "response").write_bytes(payload)
        procs["bare"] = _valgrind(
            [str(HERE / "serving_overhead.py"), "--serve", "bare", "--port", str(ports["bare"]),
             "--response-file", str(tmp / "response")],
            tmp / "bare.callgrind",
        )  # fmt: skip
        wait_http(HOST, ports["bare"], "/", timeout_s=600)

        per_request: dict[str, list[float]] = {name: [] for name in SIDES}
        for rnd in range(args.rounds):
            for name in SIDES:
                req = build_request("POST", HOST, ports[name], INFER_PATH, BODY)
                pid = procs[name].pid

                def load(n: int, port: int = ports[name], req: bytes = req) -> int:
                    res = run_load(HOST, port, req, concurrency=args.concurrency,
                                   duration_s=600, max_requests=n, warmup_s=0)  # fmt: skip
                    assert set(res.statuses) == {200}, res.statuses
                    return res.requests

                load(max(200, args.requests // 5))
                before = _instructions(pid)
                answered = load(args.requests)
                count = (_instructions(pid) - before) / answered
                per_request[name].append(count)
                print(f"round {rnd + 1} {name:6s}: {count:,.0f} instructions/request "
                      f"({answered} requests)", flush=True)  # fmt: skip
    finally:
        stop_all(procs.values())
        shutil.rmtree(tmp, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in per_request.items()}
    result: dict[str, Any] = {
        **result_header("rest_instructions", load_at_start),
        "before_ref": args.before,
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "instructions_per_request": {name: round(v) for name, v in med.items()},
        "rest_over_before": round(med["rest"] / med["before"], 3),
        "bare_over_rest": round(med["bare"] / med["rest"], 3),
        "bare_over_before": round(med["bare"] / med["before"], 3),
        "rounds": {name: [round(v) for v in vals] for name, vals in per_request.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\ninstructions per request: before {med['before']:,.0f}, rest {med['rest']:,.0f} "
        f"({result['rest_over_before']:.3f}x before), bare {med['bare']:,.0f} "
        f"(bare/rest {result['bare_over_rest']:.3f}, bare/before {result['bare_over_before']:.3f})"
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
