"""In-cluster model stores for the real node: an HTTP file server and an S3-compatible store.

Both run as pods of the ``model-store`` image (``localcluster.images``) in the namespace
``model-stores``, behind Services with fixed cluster IPs (in the Service range's static band,
the first 256 addresses, which dynamic allocation leaves alone while it can: no other Service
takes them first), so a ModelService's
``spec.model.uri`` can name them the same way on every machine (the local cluster runs no
DNS server): ``http://10.96.0.80/<file>`` and ``s3://<bucket>/<key>`` with
``AWS_ENDPOINT_URL=http://10.96.0.81``. The HTTP store serves the directory
``<state dir>/model-store`` of the node (``publish_http`` puts a model there); the S3 store is
moto's server mode, filled through its Service with boto3 (``publish_s3``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from localcluster import images, locks, paths

NAMESPACE = "model-stores"
IMAGE = images.image_ref("model-store")
HTTP_STORE = "http-store"
"""The HTTP store's Deployment, Service and ``app.kubernetes.io/name``."""
HTTP_IP = "10.96.0.80"
S3_IP = "10.96.0.81"
HTTP_URL = f"http://{HTTP_IP}"
S3_ENDPOINT = f"http://{S3_IP}"
DEPLOY_LOCK = ".model-stores.lock"  # in the state directory: one ``deploy`` at a time
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local-secret",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": S3_ENDPOINT}


def http_dir(state_dir: Path | None = None) -> Path:
    """The node directory the HTTP store serves."""
    return paths.resolve_state_dir(state_dir) / "model-store"


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": 10001, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _store(name: str, ip: str, port: int, command: list[str], volumes: list[dict[str, Any]],
           mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "localcluster"}
    probe = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{
                "name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": command, "ports": [{"containerPort": port, "name": "http"}],
                "readinessProbe": probe, "securityContext": _security(),
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts]}],
                "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1}}}}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"clusterIP": ip, "selector": labels,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    return [deployment, service]


def manifests(state_dir: Path | None = None) -> dict[str, Any]:
    """The namespace, both stores and their Services, as one List."""
    served = http_dir(state_dir)
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    items += _store(HTTP_STORE, HTTP_IP, 8080,
                    ["python3", "-m", "http.server", "8080", "--directory", "/srv/models"],
                    [{"name": "models", "hostPath": {"path": str(served), "type": "Directory"}}],
                    [{"name": "models", "mountPath": "/srv/models", "readOnly": True}])
    items += _store("s3-store", S3_IP, 5000,
                    ["moto_server", "-H", "0.0.0.0", "-p", "5000"], [], [])
    return {"apiVersion": "v1", "kind": "List", "items": items}


def deploy(cluster: Any, timeout: float = 120) -> None:
    """Apply the stores and wait until both answer through their Services.

    Several processes (test workers) may call it at once: one applies and waits, the others
    then find the stores answering.
    """
    with locks.held(cluster.state_dir / DEPLOY_LOCK):
        _deploy(cluster, timeout)


def _deploy(cluster: Any, timeout: float) -> None:
    import urllib.error
    import urllib.request

    served = http_dir(cluster.state_dir)
    served.mkdir(parents=True, exist_ok=True)
    served.chmod(0o755)
    cluster.kubectl_run("apply", "--server-side", "-f", "-",
                        input=json.dumps(manifests(cluster.state_dir)))
    deadline = time.monotonic() + timeout
    for url in (HTTP_URL + "/", S3_ENDPOINT + "/"):
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # the store answered
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"model store {url} not answering after {timeout:.0f} s ({e}); see: "
                        f"kubectl get pods -n {NAMESPACE}; kubectl describe pods -n "
                        f"{NAMESPACE}") from e
                time.sleep(0.5)


def tar_gz(model_dir: Path) -> bytes:
    """A model directory as a .tar.gz whose members sit at the archive's top level."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for f in sorted(model_dir.rglob("*")):
            if f.is_file():
                tf.add(f, arcname=str(f.relative_to(model_dir)))
    return buf.getvalue()


def publish_http(model_dir: Path, name: str, state_dir: Path | None = None
                 ) -> tuple[str, str]:
    """Put ``model_dir`` into the HTTP store as ``<name>.tar.gz``; returns (uri, sha256)."""
    data = tar_gz(model_dir)
    target = http_dir(state_dir) / f"{name}.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(0o644)
    return f"{HTTP_URL}/{target.name}", hashlib.sha256(data).hexdigest()


def publish_s3(model_dir: Path, bucket: str, key: str) -> tuple[str, str]:
    """Upload ``model_dir`` as one .tar.gz object through the S3 store's Service."""
    return put_s3(bucket, key, tar_gz(model_dir))


def s3_client() -> Any:
    """A boto3 client of the S3 store, with its credentials."""
    import boto3

    return boto3.client("s3", endpoint_url=S3_ENDPOINT,
                        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])


def ensure_bucket(bucket: str) -> None:
    s3 = s3_client()
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def put_s3(bucket: str, key: str, data: bytes) -> tuple[str, str]:
    """Store ``data`` as object ``key`` (the bucket created if needed); (uri, sha256)."""
    ensure_bucket(bucket)
    s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}", hashlib.sha256(data).hexdigest()


def credentials_secret(name: str, namespace: str) -> dict[str, Any]:
    """A Secret with the S3 store's endpoint and credentials (``spec.credentialsSecret``)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": dict(S3_CREDENTIALS)}
