"""Fixtures shared by the integration tests: the ModelService CRD installed once per session;
a private control plane for tests that restart components or run a cluster-wide operator."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from msv_operator import kube
from operator_harness import RunningOperator, api

from localcluster import cluster as lc

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelservices.serving.modelservice.dev.yaml"


@pytest.fixture(scope="session")
def crd(cluster: lc.Cluster) -> None:
    """The ModelService CRD from crds/, applied server-side and Established.

    Cluster-scoped and shared by every test (and a running demo): never deleted here.
    """
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_established("modelservices.serving.modelservice.dev")


@pytest.fixture(scope="session")
def private_cluster(cluster: lc.Cluster, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[lc.Cluster]:
    """A second control plane of the session's own (simulated nodes only), CRD installed.

    For what must not touch the shared one: a cluster-wide operator (it would reconcile
    other tests' ModelServices) and API-server/etcd restarts. ``$MSV_PRIVATE_STATE`` names a
    running one to reuse (it is then left running).
    """
    given = os.environ.get("MSV_PRIVATE_STATE")
    state = Path(given) if given else tmp_path_factory.mktemp("private-cluster")
    try:
        c = lc.up(state, timeout=180, real_node=False)
    except lc.ClusterError as e:
        pytest.fail(f"could not start a private control plane: {e}", pytrace=False)
    try:
        c.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        c.wait_established("modelservices.serving.modelservice.dev")
        yield c
    finally:
        if not given:
            lc.down(state)


@pytest.fixture
def k(cluster: lc.Cluster) -> Iterator[kube.Kube]:
    """The operator's own API facade, as admin, for tests that read and write objects."""
    client = api()
    yield client
    client.close()


@pytest.fixture
def operator(crd: None, namespace: str) -> Iterator[RunningOperator]:
    """An operator (kopf, in-process) watching only the test's namespace; must survive the test."""
    op = RunningOperator([namespace]).start()
    yield op
    assert op.alive, "the operator must still be running at the end of the test"
    op.stop()
