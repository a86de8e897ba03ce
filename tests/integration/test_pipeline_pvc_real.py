"""A built variant published to a PersistentVolumeClaim, on real pods (docs/optimization.md,
"A PersistentVolumeClaim as the output").

``build.output.uri: pvc://claim/prefix/``: the Job mounts the claim read-write and publishes
``<prefix>/<key>/model.tar.gz``, ``report.json`` and ``MANIFEST`` last to it; the operator, which
mounts no volume, records what the Job's result says (key, sha256); the variant's pull init
container mounts the claim read-only and unpacks the archive, checked against that sha256.

The local cluster has no StorageClass: the test makes a ``local`` PersistentVolume on a
directory of the real node (the test runs on that machine), pinned to the node and pre-bound
to the test's claim. The directory is writable by anyone, so the Job's restricted user can
publish whether or not the volume applies ``fsGroup``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifests import MS_API
from msv_operator import kube
from operator_harness import RunningOperator, condition
from realpods import (
    REAL_NODE,
    served,
    stores,  # noqa: F401 (the fixture: the in-cluster model stores)
    wait_ready,
)
from test_pipeline_real import (  # noqa: F401 (operator, trained: fixtures)
    data_lines,
    jobs,
    operator,
    predict,
    trained,
    variant,
    wait_published,
)
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores
from msv_contract import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.torch]

CLAIM = "built"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


@pytest.fixture
def claim(cluster: lc.Cluster, real_namespace: str) -> Iterator[Path]:
    """The claim ``CLAIM`` in the test's namespace, bound to a local PersistentVolume on a
    directory of the real node; yields the directory."""
    root = cluster.state_dir / f"pvc-{real_namespace}"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)  # explicit: the umask would take the group's and others' write
    pv = f"msv-test-{uuid.uuid4().hex[:8]}"
    try:
        cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "volumeMode": "Filesystem", "local": {"path": str(root)},
                "claimRef": {"namespace": real_namespace, "name": CLAIM},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In",
                     "values": [REAL_NODE]}]}]}}}})
        cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": real_namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "volumeName": pv, "resources": {"requests": {"storage": "2Gi"}}}})
        wait_for(f"PersistentVolumeClaim {CLAIM} bound", lambda: cluster.kubectl_run(
            "get", "pvc", CLAIM, "-n", real_namespace, "-o", "jsonpath={.status.phase}",
            check=False).stdout.strip() == "Bound" or None, timeout=60, interval=0.5)
        yield root
    finally:
        cluster.kubectl_run("delete", "pvc", CLAIM, "-n", real_namespace, "--wait=false",
                            check=False)
        cluster.kubectl_run("delete", "pv", pv, "--wait=false", check=False)
        shutil.rmtree(root, ignore_errors=True)


def with_pvc_build(name: str, ns: str, source: tuple[str, str], data: tuple[str, str],
                   **build_fields: Any) -> dict[str, Any]:
    build = {"recipe": "prune-recover",
             "data": {"uri": data[0], "sha256": data[1], "credentialsSecret": "s3-creds",
                      "labels": True},
             "pruning": {"amount": 0.5}, "budget": {"steps": 20},
             "output": {"uri": f"pvc://{CLAIM}/builds/"}, **build_fields}
    return served(name, ns, source[0], source[1], credentials="s3-creds",
                  variants=[{"name": "baseline"}, {"name": "pruned", "build": build}],
                  traffic={"baseline": 100})


def job_result(k: kube.Kube, ns: str, job: str) -> dict[str, Any]:
    """The build container's termination message (the Job's result)."""
    for pod in k.list("v1", "Pod", ns, f"{JOB_NAME_LABEL}={job}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
            if cs.get("name") == "optimize" and message:
                return dict(json.loads(message))
    return {}


def test_a_build_published_to_a_claim_is_served_checked_and_never_recomputed(
        cluster: lc.Cluster, stores: None, trained: Path, real_namespace: str,  # noqa: F811
        operator: RunningOperator, k: kube.Kube, claim: Path) -> None:  # noqa: F811
    ns, name = real_namespace, "pvcpipe"
    k.apply(modelstores.credentials_secret("s3-creds", ns))
    source = modelstores.publish_s3(trained, "models", f"{ns}/trained.tar.gz")
    data = modelstores.put_s3("data", f"{ns}/sentiment.txt", data_lines())
    k.apply(with_pvc_build(name, ns, source, data))

    # the Job publishes to the claim; the operator records its result
    build = wait_published(k, ns, name, "pruned")
    ms = wait_ready(k, ns, name)
    assert condition(ms, "Built")["status"] == "True"
    (job,) = jobs(k, ns)
    key = str((build or {}).get("key"))
    record = variant(k, ns, name, "pruned")["provenance"]
    assert record["key"] == key and record["job"] == job
    assert record["artifactUri"] == f"pvc://{CLAIM}/builds/{key}/{pipeline.ARTIFACT_FILE}"
    assert 0 <= record["report"]["agreement"] <= 1, record
    # what the volume holds: the archive with the recorded sha256, the MANIFEST saying so
    stored = claim / "builds" / key
    artifact = stored / pipeline.ARTIFACT_FILE
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == record["artifactSha256"]
    manifest = json.loads((stored / pipeline.MANIFEST_FILE).read_bytes())
    assert manifest["key"] == key and manifest["sha256"] == record["artifactSha256"]
    # the variant's pods pull that archive from the claim (read-only), checked by its sha256
    dep = k.get("apps/v1", "Deployment", ns, f"{name}-pruned") or {}
    pod = dep["spec"]["template"]["spec"]
    pull = pod["initContainers"][0]
    assert pull["args"][1].endswith(f"/builds/{key}/{pipeline.ARTIFACT_FILE}"), pull["args"]
    assert pull["args"][pull["args"].index("--sha256") + 1] == record["artifactSha256"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"] for v in claims] == [
        {"claimName": CLAIM, "readOnly": True}], pod["volumes"]
    answer = predict(k, ns, f"{name}-pruned", name)
    assert answer[0]["data"], answer
    written = artifact.stat().st_mtime_ns

    # the same recipe with the record in the status: its Job gone (as after the TTL), a new
    # generation (deadline is not in the key) runs no Job and serves the same artifact
    uid = (k.get("batch/v1", "Job", ns, job) or {}).get("metadata", {}).get("uid")
    k.delete("batch/v1", "Job", ns, job, uid)
    wait_for(f"Job {job} deleted", lambda: job not in jobs(k, ns) or None, timeout=60)
    current = k.get(MS_API, "ModelService", ns, name) or {}
    current["spec"]["variants"][1]["build"]["deadline"] = "90m"
    for field in ("resourceVersion", "managedFields"):
        current["metadata"].pop(field, None)
    current.pop("status", None)
    k.apply(current)
    wait_ready(k, ns, name)
    assert variant(k, ns, name, "pruned")["provenance"]["artifactSha256"] == \
        record["artifactSha256"]
    assert jobs(k, ns) == [], "a recorded artifact must not run a Job"

    # the same recipe under another name (no record in its status): a short Job finds the
    # published MANIFEST and ends without work; nothing is rewritten on the claim
    k.apply(with_pvc_build("again", ns, source, data))
    wait_published(k, ns, "again", "pruned", timeout=300)
    wait_ready(k, ns, "again")
    again = variant(k, ns, "again", "pruned")["provenance"]
    assert again["key"] == key and again["artifactSha256"] == record["artifactSha256"]
    (short,) = jobs(k, ns)
    result = job_result(k, ns, short)
    assert result.get("summary", {}).get("reused") is True, result
    assert artifact.stat().st_mtime_ns == written, "the published artifact was rewritten"
    assert predict(k, ns, "again-pruned", "again") == predict(k, ns, f"{name}-pruned", name)
