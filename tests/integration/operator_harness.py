"""Helpers for the operator's integration tests: run the operator in-process, namespace-scoped.

Other engineers' tests share the control plane, so the operator under test only ever watches
the test's own namespace. ``RunningOperator`` runs ``handlers.operate`` (kopf) in a background
thread with its own event loop, like kopf's "embedding" recipe, and stops it gracefully.
``OperatorProcess`` runs ``msv-operator run`` as a real process (for kill -9, SIGTERM and
several replicas); bench/operator_failover.py uses it too. ModelService manifests come from
tests/manifests.py, ``wait_for`` from tests/waiting.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from manifests import MS_API as MS_API  # re-exported: bench/operator_failover.py
from manifests import modelservice as modelservice
from msv_operator import handlers, kube
from msv_operator.config import OperatorConfig
from msv_operator.metrics import OperatorMetrics
from waiting import wait_for

from localcluster.ports import free_port as free_port  # re-exported: test_operator_ha

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modelservices.serving.modelservice.dev.yaml"
LABEL_MODELSERVICE = "serving.modelservice.dev/modelservice"
LABEL_VARIANT = "serving.modelservice.dev/variant"
FIELD_MANAGER = "modelservice-operator"


class RunningOperator:
    """One operator (kopf) in a background thread, restricted to ``namespaces``."""

    def __init__(self, namespaces: Iterable[str], **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "namespaces": tuple(namespaces), "metrics_port": 0, "health_port": 0,
            "resync_seconds": 2.0, "discovery_seconds": 1.0, "max_workers": 4,
        }
        settings.update(overrides)
        self.config = OperatorConfig(**settings)
        self.metrics = OperatorMetrics()
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="msv-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(handlers.operate(self.config, self.metrics, stop_flag=self.stop_flag,
                                         ready_flag=self.ready_flag))
        except BaseException as e:  # surfaced by stop()/start()
            self.error = e

    def start(self, timeout: float = 60) -> RunningOperator:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.ready_flag.wait(0.1):
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the operator died while starting: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the operator did not become ready")
        return self

    def stop(self, timeout: float = 60) -> None:
        self.stop_flag.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("the operator did not stop within the grace period")

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def operator_metrics(port: int) -> dict[str, float]:
    """``msv_operator_*`` samples from an operator's ``/metrics`` ({} while it is not up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("msv_operator_"):
            sample, _, value = line.rpartition(" ")
            out[sample] = float(value)
    return out


class OperatorProcess:
    """``python -m msv_operator run`` watching ``namespace``, its metrics on a free port."""

    def __init__(self, namespace: str | None, *args: str, name: str = "operator",
                 env: dict[str, str] | None = None) -> None:
        """``namespace`` None: all namespaces; ``env`` replaces the environment (e.g. a
        ``KUBECONFIG`` with a ServiceAccount's token)."""
        self.name = name
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="msv-op-")) / f"{name}.log"
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        cmd = [sys.executable, "-m", "msv_operator", "run", *scope,
               "--metrics-port", str(self.port), "--bind-address", "127.0.0.1",
               "--health-port", "0", "--resync-seconds", "2", "--discovery-seconds", "1",
               "--max-workers", "4", *args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def metrics(self) -> dict[str, float]:
        """The operator's own samples (``{}`` while its endpoint is not up)."""
        return operator_metrics(self.port)

    def scrape(self, timeout: float = 60) -> dict[str, float]:
        """The operator's samples, for an assertion: a live operator's endpoint may miss the
        2 s scrape timeout on a loaded machine, which must not read as "no writes"."""
        return wait_for(f"{self.name}'s /metrics to answer",
                        lambda: self.metrics() or self._dead(), timeout=timeout, interval=0.5)

    def total(self, prefix: str) -> float:
        return sum(v for k, v in self.scrape().items() if k.startswith(prefix))

    def wait_up(self, timeout: float = 60) -> OperatorProcess:
        wait_for(f"{self.name} to serve /metrics", lambda: self.metrics() or self._dead(),
                 timeout=timeout, interval=0.1)
        return self

    def _dead(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """kill -9, and reap it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (a graceful stop); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive:
            self.kill()


def api(kubeconfig: Path | None = None) -> kube.Kube:
    """A client for the tests' own reads and writes (separate from the operator's); by
    default for ``$KUBECONFIG``."""
    if kubeconfig is None:
        return kube.Kube("msv-tests")
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig),
                                       client_configuration=configuration)
    return kube.Kube("msv-tests", configuration=configuration)


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same API server as ``admin`` that authenticates with ``token``
    (a ServiceAccount's), as a pod's in-cluster config would."""
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "sa"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def condition(ms: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((ms or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return {}


def crd_file() -> Path:
    return Path(os.environ.get("MSV_TEST_CRD", str(CRD_FILE)))
