"""The operator's Deployments and the model server agree on the environment (no cluster).

The operator configures the server only through `MODEL_SERVER_*` variables
(docs/architecture.md). These tests build the Deployments of a rich ModelService with the
real builders and feed their environment to the server's real `Settings`: every variable
must be one the server reads, with a value it accepts, and every setting is either written
by the operator or listed here as deliberately left at the server's default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from msv_operator import builders as b
from msv_operator import status
from msv_operator.config import uniform_images
from msv_operator.spec import parse_spec

from model_server import cli
from model_server.mirror import control
from model_server.settings import ENV_PREFIX, Settings, env_names, mirror_base_url, unknown_env

OPTS = b.BuildOptions(images=uniform_images("ms:cpu", "ms:cuda"),
                      service_monitor=True, gateway_api=True)

# Settings the operator leaves at the server's default, on purpose.
NOT_WIRED = {
    "model_version", "host", "log_format", "log_level", "infer_fast_path", "access_log",
    "max_queue", "request_timeout_s", "max_request_bytes", "trust_remote_code",
    "exit_on_load_failure", "termination_log", "header_timeout_s",
    "torch_threads",  # written only when spec.server.torchThreads is set (checked below)
    "mirror_queue", "mirror_timeout_seconds",  # the mirror's own tuning, server defaults
    "mirror_file_interval_seconds",
    "auth_reload_seconds",  # the server polls its token Secret at its default interval
    # A fixed mirror for a server run by hand; the operator names the target in a pod
    # annotation instead (MODEL_SERVER_MIRROR_FILE, checked below), so no pod restarts.
    "mirror_url", "mirror_percent", "mirror_variant",
}

# The mirroring contract with the operator's rollout (names fixed; docs/model-server.md).
MIRROR_ENV = {
    "MODEL_SERVER_MIRROR_URL": "http://10.96.3.7:80",
    "MODEL_SERVER_MIRROR_PERCENT": "12.5",
    "MODEL_SERVER_MIRROR_VARIANT": "int8",
    "MODEL_SERVER_MIRROR_QUEUE": "128",
    "MODEL_SERVER_MIRROR_TIMEOUT_SECONDS": "2.5",
}


def rich(gpu: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/sst2.tgz", "sha256": "a" * 64,
                  "framework": "transformers", "task": "text-classification",
                  "credentialsSecret": "s3-creds"},
        "variants": [
            {"name": "baseline"},
            {"name": "fp16", "optimization": {"quantization": "float16"}},
            {"name": "int8", "optimization": {"quantization": "dynamic-int8"}},
            {"name": "pruned", "optimization": {"pruning": {"method": "structured",
                                                            "amount": 0.3}}},
            {"name": "sparse", "model": {"uri": "pvc://models/sparse"},
             "optimization": {"quantization": "bfloat16",
                              "pruning": {"method": "unstructured", "amount": 0.5}}},
        ],
        "traffic": [{"variant": "baseline", "weight": 70}, {"variant": "fp16", "weight": 10},
                    {"variant": "int8", "weight": 10}, {"variant": "pruned", "weight": 10}],
        "replicas": 4,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetInFlight": 4},
        "server": {"image": "ms:custom", "imagePullPolicy": "IfNotPresent", "torchThreads": 2,
                   "batching": {"maxBatchSize": 32, "maxDelayMs": 5},
                   "auth": {"tokenSecret": "sentiment-tokens"},
                   "tls": {"secretName": "sentiment-tls"}},
        "gateway": {"parentRefs": [{"name": "gw"}]},
        "rollout": {"candidate": "sparse", "analysis": {"mirrorPercent": 10}},
    }
    if gpu:
        spec["gpu"] = {"count": 1, "products": ["NVIDIA-A100-SXM4-80GB"]}
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}, "spec": spec}


STEP = b.Serving({"baseline": 60, "fp16": 10, "int8": 10, "pruned": 10, "sparse": 10},
                 b.Mirror("https://10.96.0.9:80", 10, "sparse"))


def deployments(gpu: bool) -> list[dict[str, Any]]:
    """The Deployments at a rollout step (the stable variants mirror to the candidate)."""
    body = rich(gpu)
    return [o for o in b.build_all(body, OPTS, parse_spec(body), STEP)
            if o["kind"] == "Deployment"]


def server_env(dep: dict[str, Any]) -> dict[str, str]:
    pod = dep["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == b.SERVER_CONTAINER]
    return {e["name"]: e["value"] for e in c["env"]}


@pytest.mark.parametrize("gpu", [False, True])
def test_every_model_server_variable_the_operator_writes_is_a_setting(
    gpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = deployments(gpu)
    assert len(deps) == 5
    for dep in deps:
        env = server_env(dep)
        ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert unknown_env(ours) == [], dep["metadata"]["name"]
        for key in list(os.environ):
            if key.startswith(ENV_PREFIX):
                monkeypatch.delenv(key)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # the server's own parsing and validation
        fields = env_names()
        for key, value in ours.items():
            parsed = getattr(settings, fields[key])
            if isinstance(parsed, bool):
                assert value == str(parsed).lower(), (key, value, parsed)
                continue
            assert str(parsed) == value or parsed == type(parsed)(value) or (
                value == "" and parsed is None), (key, value, parsed)
        assert settings.device == ("cuda" if gpu else "cpu")
        assert settings.drain_seconds == b.DRAIN_SECONDS
        assert settings.torch_threads == 2
        assert settings.mirror_file == Path(b.PODINFO_DIR) / "annotations"


def test_init_containers_get_no_server_settings() -> None:
    for dep in deployments(gpu=False):
        for c in dep["spec"]["template"]["spec"].get("initContainers", []):
            names = [e["name"] for e in c.get("env", [])]
            assert unknown_env(dict.fromkeys(names, "")) == []


def test_every_setting_is_wired_by_the_operator_or_deliberately_left_default() -> None:
    written = set()
    for gpu in (False, True):
        for dep in deployments(gpu):
            written |= {env_names()[k] for k in server_env(dep) if k.startswith(ENV_PREFIX)}
    assert set(Settings.model_fields) - written == NOT_WIRED - written
    assert written & NOT_WIRED <= {"torch_threads"}


def test_unknown_variables_are_named_with_a_suggestion() -> None:
    env = {"MODEL_SERVER_QUANTISATION": "float16", "MODEL_SERVER_FOO": "1",
           "MODEL_SERVER_PORT": "8080", "OTHER": "x"}
    assert unknown_env(env) == [
        "MODEL_SERVER_FOO",
        "MODEL_SERVER_QUANTISATION (did you mean MODEL_SERVER_QUANTIZATION?)",
    ]


def test_grace_period_covers_drain_and_in_flight_requests() -> None:
    dep = deployments(gpu=False)[0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == b.TERMINATION_GRACE_SECONDS
    assert b.TERMINATION_GRACE_SECONDS >= b.DRAIN_SECONDS + cli.SHUTDOWN_TIMEOUT_S + 5


def test_containers_report_termination_messages_under_the_names_status_reads() -> None:
    assert (b.SERVER_CONTAINER, b.PULL_CONTAINER) == (status.SERVER_CONTAINER,
                                                      status.PULL_CONTAINER)
    pod = deployments(gpu=False)[0]["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["initContainers"]] + [c["name"] for c in pod["containers"]]
    assert names == [b.PULL_CONTAINER, b.SERVER_CONTAINER]
    assert pod["volumes"][0]["name"] == status.MODEL_VOLUME
    for c in pod["initContainers"] + pod["containers"]:
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_rollout_mirror_variables_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert unknown_env(MIRROR_ENV) == []
    for key, value in MIRROR_ENV.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.mirror_url == "http://10.96.3.7:80"
    assert (settings.mirror_percent, settings.mirror_variant) == (12.5, "int8")
    assert (settings.mirror_queue, settings.mirror_timeout_seconds) == (128, 2.5)
    monkeypatch.setenv("MODEL_SERVER_MIRROR_URL", "")  # the operator's "off"
    assert Settings().mirror_url is None


def test_the_mirror_annotation_the_operator_writes_is_one_the_server_reads() -> None:
    """The stable pods' annotation, in the file the downward API volume makes of it, gives
    the server's mirror control the operator's target; the candidate's pods carry none."""
    assert b.MIRROR_ANNOTATION == control.ANNOTATION
    dep = deployments(gpu=False)[0]
    pod = dep["spec"]["template"]["spec"]
    (item,) = next(v for v in pod["volumes"] if v["name"] == "podinfo")["downwardAPI"]["items"]
    assert item == {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "podinfo"]
    assert server_env(dep)["MODEL_SERVER_MIRROR_FILE"] == f"{mount['mountPath']}/annotations"

    marks = b.pod_marks(parse_spec(rich(False)), STEP)
    assert marks["sparse"].mirror is None
    for variant in ("baseline", "fp16", "int8", "pruned"):
        value = marks[variant].mirror
        assert value is not None
        # the kubelet writes key="value" with the value Go-quoted (JSON-compatible here)
        text = f'other="x"\n{b.MIRROR_ANNOTATION}={json.dumps(value)}\n'
        target = control.parse_target(control.read_annotations(text)[control.ANNOTATION],
                                      mirror_base_url)
        assert target == control.MirrorTarget("https://10.96.0.9:80", 10.0, "sparse")
