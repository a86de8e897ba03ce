"""Shared pytest fixtures: the local control plane (``cluster``) and a fresh ``namespace`` per test.

``cluster`` is session-scoped. It reuses a healthy control plane that is already running in
the shared state directory (``$MSV_STATE``, default ``~/.cache/modelservice/state``), or starts
one and stops it at the end of the session, unless another live test session still uses it
or ``MSV_KEEP_CLUSTER=1``. Several sessions may use it at once (scripts/test runs two
pytest-xdist workers): each registers its pid, and only the last one to finish stops it. It
never builds: missing binaries fail the test with the command to run. Tests that use it are
marked ``cluster`` automatically.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator

import pytest
from waiting import wait_for

from localcluster import build, nodes, paths
from localcluster import cluster as lc

# Subprocesses the tests start (msv-operator, model-server) import this checkout's code too.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(_ROOT, "operator"), _ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Each test leaves the root logger as it found it. A command run in-process (a
    ``main()``: the operator's, the server's, a build's) installs a handler on the stderr
    pytest captured for that test alone; left behind, it writes every later record (an
    in-process operator's, on another thread) to a closed stream as "--- Logging error ---"."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"cluster", "namespace", "real_namespace"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[lc.Cluster]:
    """The running local control plane (``.kubeconfig``, ``.kubectl``, ``.helm``, ``.env``)."""
    missing = build.missing_binaries()
    if missing:
        pytest.fail(
            f"the local control plane is not built (missing: {', '.join(missing)}); "
            "run: python -m localcluster build",
            pytrace=False,
        )
    state_dir = paths.resolve_state_dir()
    try:
        c = lc.up(state_dir, timeout=180, owner="pytest", user=os.getpid())
    except lc.ClusterError as e:
        pytest.fail(f"could not start the local control plane: {e}", pytrace=False)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(c.kubeconfig)
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        if os.environ.get("MSV_KEEP_CLUSTER") == "1":
            (state_dir / "users" / str(os.getpid())).unlink(missing_ok=True)
        else:
            lc.release(state_dir)


def _make_namespace(cluster: lc.Cluster, request: pytest.FixtureRequest,
                    annotations: dict[str, str], labels: dict[str, str]) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "annotations": annotations, "labels": labels}})
    wait_for(f"namespace {name} to get its default service account",
             lambda: cluster.kubectl_run("get", "serviceaccount", "default", "-n", name,
                                         check=False).returncode == 0, timeout=30, interval=0.2)
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: lc.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test whose pods go to kwok's simulated CPU nodes.

    For tests of operator logic and scheduling: pods there are marked Ready by kwok, never
    run. Tests that need pods to really run use ``real_namespace``.
    """
    yield from _make_namespace(cluster, request, dict(nodes.SIMULATED_NAMESPACE), {})


RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def _make_real_namespace(cluster: lc.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    if not cluster.real_node:
        pytest.fail("this test needs the real node; start the cluster without --no-real-node",
                    pytrace=False)
    yield from _make_namespace(cluster, request, {}, RESTRICTED)


@pytest.fixture
def real_namespace(cluster: lc.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose CPU pods run on the real node, under Pod Security
    ``restricted`` (enforced), as a careful platform team would configure it."""
    yield from _make_real_namespace(cluster, request)


@pytest.fixture(scope="module")
def module_real_namespace(cluster: lc.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """``real_namespace`` shared by the tests of one module: ModelServices applied together
    start their pods together (named after the module)."""
    yield from _make_real_namespace(cluster, request)
