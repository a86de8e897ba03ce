"""Fixtures shared by the integration tests: the ModelService CRD installed once per session."""

from __future__ import annotations

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
