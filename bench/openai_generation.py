"""OpenAI-compatible generation: ours vs `transformers serve`, same tiny model and client.

Both servers load the same tiny GPT-2 built locally by tests/modelfactory.py (nothing is
downloaded) with one torch thread, greedy decoding, and are driven by the official `openai`
client (`AsyncOpenAI`): `concurrency` streams of `/v1/completions` with `stream: true` and
`max_tokens`, restarted as soon as they end, for `--duration` seconds per round; rounds
alternate between the servers. Measured: generated tokens per second over all streams (the
streamed text re-tokenized with the model's tokenizer, the same count for both) and the
p50 time to the first streamed token. `transformers serve` (transformers' own
OpenAI-compatible server, the same package version) runs from the peer venv
`bench-venvs/transformers-serve` (bench/README.md: it adds only `accelerate`, which that
server needs). Goal (issue 12): >= 1.3x its tokens/s at 8 concurrent streams.

    python bench/openai_generation.py [--duration 10] [--rounds 2] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
from loadgen import (  # noqa: E402
    Medians,
    cpu_seconds,
    free_port,
    result_header,
    stop_all,
    wait_http,
)

HOST = "127.0.0.1"
PEER_PYTHON = (
    Path(os.environ.get("BENCH_VENVS", "~/.cache/modelservice/bench-venvs")).expanduser()
    / "transformers-serve"
    / "bin"
    / "python"
)
PROMPT = "the cat sat on the"


PEER_FLAGS = {"transformers_serve": [], "transformers_serve_cb": ["--continuous-batching"]}


def _start(name: str, model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if name == "ours":
        cmd = [sys.executable, "-m", "model_server", "serve", "--model-dir", str(model_dir),
               "--task", "text-generation", "--model-name", "gpt", "--host", HOST,
               "--port", str(port), "--torch-threads", "1", "--log-level", "warning"]  # fmt: skip
        return subprocess.Popen(cmd, env=env, cwd=ROOT)
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from transformers.cli.transformers import main\n"
        f"sys.argv = ['transformers', 'serve', {str(model_dir)!r}, '--host', {HOST!r},"
        f" '--port', '{port}', '--log-level', 'warning', *{PEER_FLAGS[name]!r}]\n"
        "sys.exit(main())\n"
    )
    return subprocess.Popen([str(PEER_PYTHON), "-c", code], env=env, stdout=subprocess.DEVNULL)


async def _streams(
    base_url: str, model: str, concurrency: int, duration_s: float, max_tokens: int, tokenizer: Any
) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    ttfts: list[float] = []
    tokens = 0
    streams = 0
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal tokens, streams
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            first: float | None = None
            text = []
            stream = await client.completions.create(
                model=model, prompt=PROMPT, max_tokens=max_tokens, stream=True
            )
            async for chunk in stream:
                piece = chunk.choices[0].text if chunk.choices else ""
                if piece:
                    if first is None:
                        first = time.perf_counter() - started
                    text.append(piece)
            if first is not None:
                ttfts.append(first)
            tokens += len(tokenizer("".join(text), add_special_tokens=False)["input_ids"])
            streams += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "tokens_per_s": round(tokens / elapsed, 1),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 2) if ttfts else None,
        "streams": streams,
        "tokens": tokens,
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(HERE / "results" / "openai_generation.json"))
    args = parser.parse_args()
    if not PEER_PYTHON.exists():
        sys.exit(f"no transformers-serve venv at {PEER_PYTHON.parent.parent}; see bench/README.md")
    from modelfactory import make_text_generator
    from transformers import AutoTokenizer

    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="openai-gen-"))
    model_dir = tmp / "gpt2"
    make_text_generator(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ports = {name: free_port() for name in ("ours", *PEER_FLAGS)}
    models = {name: "gpt" if name == "ours" else str(model_dir) for name in ports}
    procs = {name: _start(name, model_dir, port) for name, port in ports.items()}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"cN": []} for n in ports}
    try:
        wait_http(HOST, ports["ours"], "/v2/health/ready")
        for peer in PEER_FLAGS:
            wait_http(HOST, ports[peer], "/v1/models")
        for name, port in ports.items():  # warm-up: the peer loads its model on first use
            asyncio.run(_streams(f"http://{HOST}:{port}/v1", models[name], 1, 1.0,
                                 args.max_tokens, tokenizer))  # fmt: skip
        for rnd in range(args.rounds):
            for name, port in ports.items():
                cpu0 = cpu_seconds(procs[name].pid)
                summary = asyncio.run(
                    _streams(
                        f"http://{HOST}:{port}/v1",
                        models[name],
                        args.concurrency,
                        args.duration,
                        args.max_tokens,
                        tokenizer,
                    )
                )
                cpu1 = cpu_seconds(procs[name].pid)
                summary["server_cpu_ms_per_token"] = round(
                    (cpu1 - cpu0) / max(1, summary["tokens"]) * 1e3, 3
                )
                runs[name]["cN"].append(summary)
                print(f"round {rnd + 1} {name}: {summary}", flush=True)
    finally:
        stop_all(procs.values(), timeout_s=10)
    med = Medians(runs)
    result: dict[str, Any] = {
        **result_header("openai_generation", load_at_start),
        "model": "tiny GPT-2 from tests/modelfactory.py (n_embd 32, 2 layers), greedy",
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
    }
    for name in ports:
        result[f"{name}_tokens_per_s"] = med(name, "cN", "tokens_per_s")
        result[f"{name}_ttft_p50_ms"] = med(name, "cN", "ttft_p50_ms")
        result[f"{name}_cpu_ms_per_token"] = med(name, "cN", "server_cpu_ms_per_token")
    result["tokens_per_s_ratio"] = med.ratio("ours", "transformers_serve", "cN", "tokens_per_s")
    result["tokens_per_s_ratio_vs_continuous_batching"] = med.ratio(
        "ours", "transformers_serve_cb", "cN", "tokens_per_s")
    result["ttft_ratio"] = med.ratio("ours", "transformers_serve", "cN", "ttft_p50_ms")
    result["goal"] = {"tokens_per_s_ratio": ">= 1.3"}
    result["goal_met"] = result["tokens_per_s_ratio"] >= 1.3
    result["runs"] = runs
    import json

    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nours {result['ours_tokens_per_s']:.0f} tokens/s vs transformers serve "
        f"{result['transformers_serve_tokens_per_s']:.0f} -> {result['tokens_per_s_ratio']:.2f}x "
        f"(goal >= 1.3x); p50 time to first token: ours {result['ours_ttft_p50_ms']} ms, "
        f"theirs {result['transformers_serve_ttft_p50_ms']} ms\n"
        f"vs transformers serve --continuous-batching "
        f"{result['transformers_serve_cb_tokens_per_s']:.0f} tokens/s -> "
        f"{result['tokens_per_s_ratio_vs_continuous_batching']:.2f}x, first token "
        f"{result['transformers_serve_cb_ttft_p50_ms']} ms"
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
