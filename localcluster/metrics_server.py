"""A stand-in for metrics-server: serves ``metrics.k8s.io/v1beta1`` to the aggregation layer.

There are no real containers, so there is no real usage. Each pod reports the usage written
in its annotations ``localcluster.modelservice.dev/cpu-usage`` and ``.../memory-usage``
(Kubernetes quantities, e.g. ``250m`` and ``512Mi``; default ``0``), attributed to its first
container; a node reports the sum over its pods. Tests drive the real horizontal-pod-autoscaler
controller by annotating pods. Run by ``localcluster up`` as
``python -m localcluster.metrics_server --state-dir DIR --port PORT``; registered through an
APIService backed by an ExternalName Service that points the aggregator at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localcluster import certs

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
CPU_ANNOTATION = "localcluster.modelservice.dev/cpu-usage"
MEMORY_ANNOTATION = "localcluster.modelservice.dev/memory-usage"
WINDOW = "1s"  # a short window: pods count as ready for CPU scaling a second after Ready

_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
           "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
           "T": Decimal(10) ** 12, "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20,
           "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40}
_QUANTITY = re.compile(r"^([0-9.]+)(n|u|m|k|M|G|T|Ki|Mi|Gi|Ti|)$")


def parse_quantity(text: str) -> Decimal:
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


def cpu_string(cores: Decimal) -> str:
    return f"{int(cores * 1_000_000_000)}n"


def memory_string(size: Decimal) -> str:
    return f"{int(size)}"


def _usage(pod: dict[str, Any]) -> tuple[Decimal, Decimal]:
    ann = pod["metadata"].get("annotations") or {}
    try:
        cpu = parse_quantity(ann.get(CPU_ANNOTATION, "0"))
        mem = parse_quantity(ann.get(MEMORY_ANNOTATION, "0"))
    except ValueError:
        return Decimal(0), Decimal(0)
    return cpu, mem


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pod_metrics(pod: dict[str, Any]) -> dict[str, Any]:
    cpu, mem = _usage(pod)
    containers = []
    for i, c in enumerate(pod["spec"].get("containers", [])):
        containers.append({"name": c["name"], "usage": {
            "cpu": cpu_string(cpu if i == 0 else Decimal(0)),
            "memory": memory_string(mem if i == 0 else Decimal(0))}})
    meta = pod["metadata"]
    return {
        "kind": "PodMetrics", "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": meta.get("labels") or {}, "creationTimestamp": _now()},
        "timestamp": _now(), "window": WINDOW, "containers": containers,
    }


def node_metrics(name: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = sum((_usage(p)[0] for p in pods), Decimal(0))
    mem = sum((_usage(p)[1] for p in pods), Decimal(0))
    return {
        "kind": "NodeMetrics", "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {"name": name, "creationTimestamp": _now()},
        "timestamp": _now(), "window": WINDOW,
        "usage": {"cpu": cpu_string(cpu), "memory": memory_string(mem)},
    }


RESOURCE_LIST = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
    "resources": [
        {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics",
         "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
         "verbs": ["get", "list"]},
    ],
}


class Api:
    """Reads pods and nodes from the API server as the admin user."""

    def __init__(self, state_dir: Path) -> None:
        cfg = json.loads((state_dir / "kubeconfig").read_text())
        self.server = cfg["clusters"][0]["cluster"]["server"]
        pki = certs.Pki(state_dir / "pki")
        self.ctx = ssl.create_default_context(cafile=str(pki.ca))
        self.ctx.load_cert_chain(str(pki.client_cert("admin")), str(pki.client_key("admin")))

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, context=self.ctx, timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data


def make_handler(api: Api) -> type[BaseHTTPRequestHandler]:
    prefix = f"/apis/{GROUP}/{VERSION}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return  # the API server's availability probes would flood the log

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": f"{what} not found"})

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            sel: dict[str, str] = {
                k: query[k] for k in ("labelSelector", "fieldSelector") if k in query
            }
            path = url.path.rstrip("/")
            try:
                self._route(path, sel)
            except urllib.error.HTTPError as e:
                self._send(e.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "code": e.code, "message": str(e)})
            except Exception as e:  # report, never crash the server
                self._send(500, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "code": 500, "message": f"{type(e).__name__}: {e}"})

        def _route(self, path: str, sel: dict[str, str]) -> None:
            if path in ("/healthz", "/readyz", "/livez"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if path == "/openapi/v2":  # a minimal, valid spec keeps the aggregator quiet
                return self._send(200, {"swagger": "2.0", "paths": {}, "info": {
                    "title": "localcluster metrics", "version": VERSION}})
            if path == prefix:
                return self._send(200, RESOURCE_LIST)
            if path == f"/apis/{GROUP}":
                gv = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
                return self._send(200, {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
                                        "versions": [gv], "preferredVersion": gv})
            if not path.startswith(prefix + "/"):
                return self._not_found(path)
            parts = path[len(prefix) + 1:].split("/")
            if parts[0] == "nodes" and len(parts) <= 2:
                return self._nodes(parts[1] if len(parts) == 2 else None, sel)
            if parts[0] == "pods" and len(parts) == 1:
                return self._pods(None, None, sel)
            if parts[0] == "namespaces" and len(parts) in (3, 4) and parts[2] == "pods":
                return self._pods(parts[1], parts[3] if len(parts) == 4 else None, sel)
            return self._not_found(path)

        def _pods(self, ns: str | None, name: str | None, sel: dict[str, str]) -> None:
            if name:
                pod = api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
                return self._send(200, pod_metrics(pod))
            base = f"/api/v1/namespaces/{ns}/pods" if ns else "/api/v1/pods"
            items = [pod_metrics(p) for p in api.get(base, sel)["items"]
                     if p.get("status", {}).get("phase") == "Running"]
            return self._send(200, {"kind": "PodMetricsList", "apiVersion": f"{GROUP}/{VERSION}",
                                    "metadata": {}, "items": items})

        def _nodes(self, name: str | None, sel: dict[str, str]) -> None:
            nodes = ([api.get(f"/api/v1/nodes/{name}")] if name
                     else api.get("/api/v1/nodes", sel)["items"])
            pods = api.get("/api/v1/pods", {"fieldSelector": "status.phase=Running"})["items"]
            items = [node_metrics(n["metadata"]["name"],
                                  [p for p in pods
                                   if p["spec"].get("nodeName") == n["metadata"]["name"]])
                     for n in nodes]
            if name:
                return self._send(200, items[0])
            return self._send(200, {"kind": "NodeMetricsList",
                                    "apiVersion": f"{GROUP}/{VERSION}", "metadata": {},
                                    "items": items})

    return Handler


def apiservice_manifests(port: int, ca_bundle_b64: str) -> dict[str, Any]:
    """The ExternalName Service and APIService that route metrics.k8s.io to this server."""
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "localcluster-metrics", "namespace": "kube-system"},
         "spec": {"type": "ExternalName", "externalName": "localhost",
                  "ports": [{"name": "https", "port": port}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": f"{VERSION}.{GROUP}"},
         "spec": {"group": GROUP, "version": VERSION, "groupPriorityMinimum": 100,
                  "versionPriority": 100, "caBundle": ca_bundle_b64,
                  "service": {"name": "localcluster-metrics", "namespace": "kube-system",
                              "port": port}}},
    ]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    args = p.parse_args(argv)
    pki = certs.Pki(args.state_dir / "pki")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(Api(args.state_dir)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.metrics_cert), str(pki.metrics_key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"serving {GROUP}/{VERSION} on https://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
