"""Fixtures shared by the integration tests: the ModelService CRD installed once per session;
a private control plane for tests that restart components or run a cluster-wide operator.

scripts/test runs two sessions at once (pytest-xdist workers) against the shared cluster:
what a fixture changes there is done under a lock in the cluster's state directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from msv_operator import kube
from operator_harness import RunningOperator, api

from localcluster import cluster as lc
from localcluster import locks

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelservices.serving.modelservice.dev.yaml"
# Lock files in a control plane's state directory (``localcluster.locks``).
CRD_LOCK = ".crd.lock"
PRIVATE_LOCK = ".tests.lock"


@pytest.fixture(scope="session")
def crd(cluster: lc.Cluster) -> None:
    """The ModelService CRD from crds/, applied server-side and Established.

    Cluster-scoped and shared by every test (and a running demo): never deleted here. One
    session at a time applies it (the others then apply nothing new).
    """
    with locks.held(cluster.state_dir / CRD_LOCK):
        cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.wait_established("modelservices.serving.modelservice.dev")


@pytest.fixture(scope="session")
def private_control_plane(cluster: lc.Cluster, tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[lc.Cluster]:
    """A second control plane of the session's own (simulated nodes only), CRD installed.

    For what must not touch the shared one: a cluster-wide operator (it would reconcile
    other tests' ModelServices) and API-server/etcd restarts. ``$MSV_PRIVATE_STATE`` names a
    running one to reuse (it is then left running). Tests use it through ``private_cluster``.
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
def private_cluster(private_control_plane: lc.Cluster) -> Iterator[lc.Cluster]:
    """The private control plane, for one test at a time: its tests change what all of it
    serves (a CRD without validation, a cluster-wide release, restarts). A session's own is
    never contended; one named by ``$MSV_PRIVATE_STATE`` is shared by every worker."""
    with locks.held(private_control_plane.state_dir / PRIVATE_LOCK):
        yield private_control_plane


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
