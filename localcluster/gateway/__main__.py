"""``python -m localcluster.gateway``: the gateway image's entry point (flags -> Controller).

Runs ``controller.Controller`` with ``nginx.DataPlane`` (nginx as its child), ``/healthz`` and
``/metrics`` on ``--metrics-port``, until SIGTERM (exit 0: nginx finishes in-flight requests)
or until nginx dies or the API cannot be listed (exit 1: the kubelet restarts the pod).
A bad flag is one line and exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from localcluster.gateway import render
from localcluster.gateway.controller import Controller, KubeApi, Settings, serve_http
from localcluster.gateway.nginx import DataPlane, NginxError


def _ports(text: str) -> frozenset[int]:
    try:
        ports = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ports") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports must be 1..65535")
    return ports


def _service(text: str) -> tuple[str, str]:
    ns, _, name = text.partition("/")
    if not ns or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return ns, name


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localcluster.gateway", description=__doc__)
    p.add_argument("--kubeconfig", help="default: the pod's service account")
    p.add_argument("--ports", type=_ports, default=frozenset({80}),
                   help="listener ports the edge serves (its Service's), comma-separated")
    p.add_argument("--service", type=_service, default=("msv-gateway", "msv-gateway"),
                   help="NAMESPACE/NAME of the data plane's Service (Gateway status.addresses)")
    p.add_argument("--metrics-port", type=int, default=8080, help="/healthz and /metrics")
    p.add_argument("--runtime-dir", type=Path, default=Path("/run/msv-gateway"),
                   help="nginx's configuration, sockets and temporary files (writable)")
    p.add_argument("--controller-name", default=render.CONTROLLER_NAME)
    p.add_argument("--debounce", type=float, default=0.5,
                   help="at most one render per this many seconds")
    p.add_argument("--workers", default="auto", help="nginx worker_processes per tier")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    options = render.Options(runtime_dir=str(args.runtime_dir), ports=args.ports,
                             workers=args.workers)
    try:
        plane = DataPlane(args.runtime_dir, args.runtime_dir, options)
    except NginxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    controller = Controller(
        KubeApi(args.kubeconfig), plane,
        Settings(options, service=args.service, controller_name=args.controller_name,
                 debounce=args.debounce),
        stub_status=plane.edge.stub_status,
        reload_counts=lambda: (plane.routing.reloads, plane.routing.reload_errors),
        budget_counters=plane.routing.budget_counters)
    serve_http(controller, args.metrics_port)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        controller.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return controller.run()
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
