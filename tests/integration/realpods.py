"""What the tests of ModelServices whose pods really run (on the local cluster's real node)
share: the small server settings, the model stores and an operator as fixtures, the waits on
Ready and on a routed Service, and one request helper.

Used by test_real_pods.py (which re-exports these names for the modules that import them
from there), test_paths_real.py and the other ``*_real`` modules. A module imports the
fixtures it uses by name (``from realpods import operator, stores``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from manifests import MS_API, model, modelservice
from msv_operator import kube
from operator_harness import RunningOperator, condition
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores

# Small requests so that several model-server pods fit on the 2-core real node.
SERVER: dict[str, Any] = {
    "torchThreads": 1,
    "resources": {"requests": {"cpu": "50m", "memory": "300Mi"},
                  "limits": {"memory": "1500Mi"}}}
LABEL_MODELSERVICE = "serving.modelservice.dev/modelservice"
LABEL_VARIANT = "serving.modelservice.dev/variant"
REAL_NODE = "node-1"


@pytest.fixture(scope="module")
def stores(cluster: lc.Cluster) -> None:
    """The in-cluster HTTP and S3 model stores, answering (deployed once, then reused)."""
    modelstores.deploy(cluster)


@pytest.fixture
def operator(crd: None, real_namespace: str) -> Iterator[RunningOperator]:
    """An operator (kopf, in-process) on the test's ``real_namespace``; must survive it."""
    op = RunningOperator([real_namespace]).start()
    yield op
    assert op.alive, "the operator must still be running at the end of the test"
    op.stop()


def served(name: str, ns: str, uri: str, sha256: str | None, credentials: str | None = None,
           **fields: Any) -> dict[str, Any]:
    """A ModelService whose pods really run: the model at ``uri`` (checked against
    ``sha256``, pulled with the ``credentials`` Secret), the small ``SERVER`` requests."""
    server = {**SERVER, **fields.pop("server", {})}
    return modelservice(name, ns, model=model(uri=uri, sha256=sha256,
                                              credentialsSecret=credentials),
                        server=server, **fields)


def ms_condition(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    return condition(k.get(MS_API, "ModelService", ns, name), "Ready")


def wait_ready(k: kube.Kube, ns: str, name: str, timeout: float = 300) -> dict[str, Any]:
    """The ModelService once it is Ready for its current generation; a ModelLoadFailed or
    InvalidSpec condition ends the wait at once."""
    def ready() -> dict[str, Any] | None:
        ms = k.get(MS_API, "ModelService", ns, name) or {}
        c = condition(ms, "Ready")
        if c.get("reason") in ("ModelLoadFailed", "InvalidSpec"):
            raise RuntimeError(f"{name} failed: {c}")  # stops the wait at once
        ok = c.get("status") == "True" and (
            ms.get("status", {}).get("observedGeneration") == ms["metadata"]["generation"])
        return ms if ok else None
    return wait_for(f"{name} Ready=True (real pods)", ready, timeout=timeout, interval=1)


def wait_reason(k: kube.Kube, ns: str, name: str, reason: str, timeout: float = 240
                ) -> dict[str, Any]:
    def reported() -> dict[str, Any] | None:
        c = ms_condition(k, ns, name)
        assert c.get("status") != "True", f"{name} must never be Ready: {c}"
        return c if c.get("reason") == reason else None
    return wait_for(f"{name}: Ready/{reason}", reported, timeout=timeout, interval=1)


def cluster_ip(k: kube.Kube, ns: str, name: str, endpoints: int = 1) -> str:
    """The Service's cluster IP, once ``endpoints`` ready pods back it and it answers.

    A ModelService is Ready when its pods are; the EndpointSlice controller and kube-proxy
    then need a moment to route to them (until then the Service refuses connections).
    """
    svc = k.get("v1", "Service", ns, name)
    assert svc, f"Service {ns}/{name} missing"
    ip: str = svc["spec"]["clusterIP"]

    def routed() -> bool:
        slices = k.list("discovery.k8s.io/v1", "EndpointSlice", ns,
                        f"kubernetes.io/service-name={name}")
        ready = [e for s in slices for e in s.get("endpoints") or []
                 if (e.get("conditions") or {}).get("ready")]
        if len(ready) < endpoints:
            return False
        try:
            with urllib.request.urlopen(f"http://{ip}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(f"Service {ns}/{name} to route to {endpoints} ready pod(s)", routed, timeout=60)
    return ip


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def pods_of(k: kube.Kube, ns: str, name: str) -> list[dict[str, Any]]:
    """The pods of ModelService ``name``."""
    return k.list("v1", "Pod", ns, f"{LABEL_MODELSERVICE}={name}")


def wait_pods_ready(k: kube.Kube, ns: str, name: str, variants: list[str],
                    timeout: float = 300) -> list[dict[str, Any]]:
    """The pods of ModelService ``name`` once every variant has pods and all are ready (none
    being replaced). A ModelService is Ready with its serving variants' pods; this waits for
    the others too."""
    def all_ready() -> list[dict[str, Any]] | None:
        pods = pods_of(k, ns, name)
        if any(p["metadata"].get("deletionTimestamp") for p in pods):
            return None
        if {p["metadata"]["labels"].get(LABEL_VARIANT) for p in pods} != set(variants):
            return None
        ready = all(s.get("ready") for p in pods
                    for s in (p.get("status") or {}).get("containerStatuses") or [{}])
        return pods if ready else None
    return wait_for(f"every pod of {name} ready ({', '.join(variants)})", all_ready,
                    timeout=timeout, interval=1)


def assert_really_ran(pod: dict[str, Any]) -> None:
    """``pod`` ran on the real node from containerd's image, its model pulled by the init
    container, and its server is ready (nothing here is a simulation's mark)."""
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == REAL_NODE, f"{name}: CPU pods must run on the real node"
    for init in pod["status"].get("initContainerStatuses") or []:
        assert init["state"]["terminated"]["exitCode"] == 0, (name, init)  # the pull ran
    server = pod["status"]["containerStatuses"][0]
    assert server["ready"], (name, server)
    assert "sha256:" in server["imageID"], (name, server)  # containerd's image, not kwok's
