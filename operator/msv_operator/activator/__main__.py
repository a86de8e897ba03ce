"""``python -m msv_operator.activator``: run the activator until SIGTERM
(docs/scale-to-zero.md, "The activator"). Flags fall back to ``MSV_ACTIVATOR_*`` variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from msv_contract import scaletozero as stz
from msv_operator import kube
from msv_operator.activator.app import METRICS_PORT, Activator, Config
from msv_operator.activator.proxy import DEFAULT_MAX_BODY


def build_parser() -> argparse.ArgumentParser:
    env = os.environ

    def get(name: str, default: object) -> str:
        return env.get(f"MSV_ACTIVATOR_{name}", str(default))

    p = argparse.ArgumentParser(prog="python -m msv_operator.activator",
                                description="Hold requests for Services at zero; tell KEDA.")
    p.add_argument("--namespace", default=env.get("POD_NAMESPACE") or None,
                   help="where the routes ConfigMap is (default: this pod's) [POD_NAMESPACE]")
    p.add_argument("--routes-configmap", default=get("ROUTES_CONFIGMAP", stz.ROUTES_CONFIGMAP))
    p.add_argument("--bind-address", default=get("BIND_ADDRESS", "0.0.0.0"))
    p.add_argument("--scaler-port", type=int, default=int(get("SCALER_PORT", stz.SCALER_PORT)),
                   help="KEDA external scaler (gRPC)")
    p.add_argument("--metrics-port", type=int, default=int(get("METRICS_PORT", METRICS_PORT)),
                   help="/metrics, /healthz, /readyz and the replicas' held counts")
    p.add_argument("--queue", type=int, default=int(get("QUEUE", stz.DEFAULT_QUEUE)),
                   help="requests held per route at most [MSV_ACTIVATOR_QUEUE]")
    p.add_argument("--hold-seconds", type=float,
                   default=float(get("HOLD_SECONDS", stz.DEFAULT_HOLD_SECONDS)),
                   help="a held request gets 503 after this [MSV_ACTIVATOR_HOLD_SECONDS]")
    p.add_argument("--max-body-bytes", type=int,
                   default=int(get("MAX_BODY_BYTES", DEFAULT_MAX_BODY)),
                   help="largest request body held; 413 beyond [MSV_ACTIVATOR_MAX_BODY_BYTES]")
    p.add_argument("--poll-seconds", type=float, default=float(get("POLL_SECONDS", 1.0)))
    p.add_argument("--peers-service", default=get("PEERS_SERVICE", ""),
                   help="the activator's own Service: its endpoints are the other replicas")
    p.add_argument("--log-level", default=env.get("MSV_LOG_LEVEL", "INFO"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = Config(
            namespace=args.namespace or kube.current_namespace(),
            routes_configmap=args.routes_configmap, bind=args.bind_address,
            scaler_port=args.scaler_port, metrics_port=args.metrics_port, queue=args.queue,
            hold_seconds=args.hold_seconds, max_body=args.max_body_bytes,
            poll_seconds=args.poll_seconds, peers_service=args.peers_service,
            pod_name=os.environ.get("POD_NAME", "activator"),
            pod_ip=os.environ.get("POD_IP", ""))
        activator = Activator(config, kube.Kube("modelservice-activator"))
    except ValueError as e:
        print(f"activator: {e}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await activator.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
