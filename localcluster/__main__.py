"""Command line of the local control plane: ``python -m localcluster build|up|down|status|...``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from localcluster import addons, build, cluster, images, keda, monitoring, paths
from localcluster.gateway import install as gateway_install
from localcluster.images import dockerfile


def _out(line: str) -> None:
    print(line, flush=True)


def _cmd_build(args: argparse.Namespace) -> int:
    return build.main_build(args.components, args.force)


def _nodes_table(c: cluster.Cluster) -> str:
    cols = ("NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
            "CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,"
            "GPUS:.status.allocatable.nvidia\\.com/gpu,"
            "GPU-PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product")
    return cluster._kubectl(c, "get", "nodes", "-o", f"custom-columns={cols}")


def _cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        c = cluster.up(args.state_dir, timeout=args.timeout, out=_out, owner="cli",
                       real_node=args.real_node)
    except cluster.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    verb = "reused" if c.reused else "started"
    _out(f"control plane {verb} in {time.monotonic() - t0:.1f} s: {c.server}")
    _out(f"kubeconfig: {c.kubeconfig}")
    _out(f"kubectl:    {c.kubectl}")
    _out(f"helm:       {c.helm}")
    _out(_nodes_table(c).rstrip())
    _out(f"use it with: export KUBECONFIG={shlex.quote(str(c.kubeconfig))}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = cluster.down(args.state_dir)
    sd = paths.resolve_state_dir(args.state_dir)
    if stopped:
        _out(f"stopped {', '.join(stopped)}; logs kept in {sd / 'logs'}")
    else:
        _out("no control plane was running")
    old = cluster.stale(args.state_dir)
    if old:
        print(f"warning: {len(old)} network namespace(s) from before this cluster started are "
              "still on the machine; they could not be removed (the kernel holds them: a "
              "reboot clears them): " + "; ".join(old), file=sys.stderr)
    left = cluster.leftovers(args.state_dir)
    if left:
        print("error: left on the machine: " + "; ".join(left), file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = cluster.status(args.state_dir)
    if not st:
        _out(f"not running (state dir {paths.resolve_state_dir(args.state_dir)})")
        return 3
    for s in st:
        state = "healthy" if s.healthy else ("UNHEALTHY" if s.alive else "DEAD")
        _out(f"{s.name:<24} {state:<9} pid={s.pid} {s.endpoint}")
        if not s.healthy:
            _out(f"    {s.detail}")
            _out(f"    last lines of {s.log}:")
            for line in s.log_tail:
                _out(f"      {line}")
    healthy = all(s.healthy for s in st)
    c = cluster.current(args.state_dir)
    if c and c.real_node:
        for name, ok, detail in [*monitoring.health(c), *keda.health(c),
                                 *gateway_install.health(c)]:
            _out(f"{name:<24} {'healthy' if ok else 'UNHEALTHY':<9} {detail}")
            healthy = healthy and ok
    if healthy:
        _out(f"kubeconfig: {paths.kubeconfig(args.state_dir)}")
    return 0 if healthy else 1


def _cmd_env(args: argparse.Namespace) -> int:
    c = cluster.current(args.state_dir)
    if not c:
        print("error: no healthy control plane; run: python -m localcluster up", file=sys.stderr)
        return 1
    for key in ("KUBECONFIG", "PATH"):
        _out(f"export {key}={shlex.quote(c.env[key])}")
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    try:
        files = addons.crd_files(args.name)
    except addons.AddonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for f in files:
        _out(str(f))
    return 0


def _cmd_paths(args: argparse.Namespace) -> int:
    _out(f"kubeconfig {paths.kubeconfig(args.state_dir)}")
    _out(f"kubectl    {paths.kubectl()}")
    _out(f"helm       {paths.helm()}")
    _out(f"state      {paths.resolve_state_dir(args.state_dir)}")
    _out(f"bin        {paths.bin_root()}")
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    try:
        if args.images_command == "build":
            images.build(args.names or None, out=_out)
        elif args.images_command == "dockerfile":
            dockerfile.write(out=_out)
        else:
            socket = paths.containerd_socket(args.state_dir)
            images.load(socket, args.names or None, out=_out)
    except images.ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build the binaries from the pinned Go modules")
    b.add_argument("components", nargs="*", help="etcd, kubernetes, kwok, helm, ..., keda "
                   "(default: all)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.set_defaults(func=_cmd_build)

    def with_state(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--state-dir", default=None,
                        help="state directory (default $MSV_STATE or $MSV_CACHE/state)")
        return sp

    u = with_state(sub.add_parser("up", help="start the control plane (or reuse a healthy one)"))
    u.add_argument("--timeout", type=float, default=180, help="seconds to wait for health")
    u.add_argument("--real-node", action=argparse.BooleanOptionalAction, default=None,
                   help="run the real node (containerd, kubelet, kube-proxy; needs root) beside "
                        "the simulated GPU pools (default: yes, unless MSV_REAL_NODE=0)")
    u.set_defaults(func=_cmd_up)
    with_state(sub.add_parser("down", help="stop it and remove its state")).set_defaults(
        func=_cmd_down)
    with_state(sub.add_parser("status", help="report each component")).set_defaults(
        func=_cmd_status)
    with_state(sub.add_parser("env", help="print shell exports for the running cluster")
               ).set_defaults(func=_cmd_env)
    with_state(sub.add_parser("paths", help="print kubeconfig, kubectl and helm paths")
               ).set_defaults(func=_cmd_paths)
    c = sub.add_parser("crds", help="print paths of an add-on's CRD manifests")
    c.add_argument("name", help=", ".join(sorted(addons.ADDONS)))
    c.set_defaults(func=_cmd_crds)

    im = sub.add_parser("images", help="build the container images locally / load them into "
                        "the node's containerd")
    im_sub = im.add_subparsers(dest="images_command", required=True)
    names_help = ", ".join(images.NAMES) + " (default: all)"
    ib = im_sub.add_parser("build", help="build OCI archives under $MSV_CACHE/images")
    ib.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    il = with_state(im_sub.add_parser("load", help="build if needed, then import into the "
                                      "node's containerd (skips images it already has)"))
    il.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    im_sub.add_parser("dockerfile", help="write the Dockerfiles generated from the image "
                      "recipes (model_server/Dockerfile.<runtime>, operator/Dockerfile)")
    im.set_defaults(func=_cmd_images)

    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
