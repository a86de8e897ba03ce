"""``python -m msv_operator.cache_agent --root DIR --max-bytes N``: run the node's model cache
agent until SIGTERM (docs/model-cache.md). Flags fall back to ``MSV_CACHE_*`` variables."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from msv_contract import modelcache as mc
from msv_operator.cache_agent import server, store


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m msv_operator.cache_agent",
                                     description="The node-local model cache agent.")
    parser.add_argument("--root", default=env.get("MSV_CACHE_ROOT", "/var/cache/modelservice"),
                        help="the cache directory (a hostPath on the node) [MSV_CACHE_ROOT]")
    parser.add_argument("--max-bytes", type=int,
                        default=int(env.get("MSV_CACHE_MAX_BYTES", str(50 * 2**30))),
                        help="the byte cap of the cached entries [MSV_CACHE_MAX_BYTES]")
    parser.add_argument("--port", type=int, default=int(env.get("MSV_CACHE_PORT", mc.PORT)))
    parser.add_argument("--bind-address", default=env.get("MSV_CACHE_BIND_ADDRESS", "0.0.0.0"))
    parser.add_argument("--file-root", action="append", default=[], metavar="DIR",
                        help="serve file:// artifacts below DIR (repeatable; none by default)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction,
                        default=env.get("MSV_CACHE_VERIFY", "true").lower() != "false",
                        help="re-hash an entry on every hit (default on) [MSV_CACHE_VERIFY]")
    parser.add_argument("--log-level", default=env.get("MSV_LOG_LEVEL", "INFO"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cache = store.Cache(Path(args.root), args.max_bytes, verify=args.verify)
    except (ValueError, OSError) as exc:
        print(f"model cache agent: {exc}", file=sys.stderr)
        return 2
    roots = tuple(Path(r).resolve() for r in args.file_root)
    httpd = server.serve(server.Agent(cache, roots), args.bind_address, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger(__name__).info("Model cache agent on port %d, cache %s, cap %d bytes",
                                     args.port, args.root, args.max_bytes)
    httpd.serve_forever()
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
