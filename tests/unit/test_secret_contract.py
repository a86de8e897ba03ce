"""The back channel for Secrets: what `model-server serve` writes to its termination message
when a mounted Secret cannot be used is what the operator's status turns into a condition
naming the Secret and its spec field (msv_contract.env.SECRET_REASONS on both sides).

The server side runs for real (the CLI on files laid out as the operator mounts them, the
termination message written to a file); the operator side reads it from a Pod as the
kubelet reports a crash-looping container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from msv_operator import status

from model_server import cli
from msv_contract import env
from tests.unit.server.certs import write_tls_secret

NOW = "2026-01-01T00:00:00Z"
TOKENS, TLS = "sentiment-tokens", "sentiment-tls"


def termination_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> str:
    """The message `model-server serve` leaves for the kubelet (it must exit 2)."""
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates the file; the server never does
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(log))
    assert cli.main(["serve", "--model-dir", str(tmp_path), *flags]) == 2
    return log.read_text()


def crash_looping(message: str) -> dict[str, Any]:
    last = {"terminated": {"exitCode": 2, "reason": "Error", "message": message}}
    return {"metadata": {"name": "sentiment-baseline-7d9c-x1", "labels": {
                status.LABEL_VARIANT: "baseline"}},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "model-server", "ready": False, "lastState": last,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}


def ready_condition(message: str) -> dict[str, Any]:
    ms = {"metadata": {"name": "sentiment", "namespace": "ml", "generation": 1},
          "spec": {"variants": [{"name": "baseline"}],
                   "server": {"auth": {"tokenSecret": TOKENS}, "tls": {"secretName": TLS}}}}
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 0}}
    out = status.compute_status(ms, deployments={"baseline": deployment},
                                pods=[crash_looping(message)], now=NOW, observed_generation=1)
    return next(c for c in out["conditions"] if c["type"] == "Ready")


def files(tmp_path: Path, kind: str) -> list[str]:
    """Flags pointing at a Secret mounted as the operator mounts it, broken as `kind` says."""
    tokens = tmp_path / "auth"
    tokens.mkdir()
    if kind == "no-token-files":  # an optional volume of a Secret that does not exist
        return ["--auth-tokens", str(tokens)]
    if kind == "blank-tokens":
        (tokens / "token").write_text("\n")
        return ["--auth-tokens", str(tokens)]
    (tokens / "token").write_text("t0k3n")
    tls = tmp_path / "tls"
    if kind == "tls-missing":
        tls.mkdir()
    else:
        write_tls_secret(tls)
        if kind == "tls-bad-pem":
            (tls / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        elif kind == "tls-key-mismatch":
            other = write_tls_secret(tmp_path / "other")
            (tls / "tls.key").write_bytes((other / "tls.key").read_bytes())
    return ["--auth-tokens", str(tokens), "--tls-cert-file", str(tls / "tls.crt"),
            "--tls-key-file", str(tls / "tls.key")]


@pytest.mark.parametrize(("kind", "reason", "field", "secret", "says"), [
    ("no-token-files", env.AUTH_SECRET_MISSING, "spec.server.auth.tokenSecret", TOKENS,
     "does not exist or has no keys"),
    ("blank-tokens", env.NO_TOKENS, "spec.server.auth.tokenSecret", TOKENS, "holds no token"),
    ("tls-missing", env.TLS_SECRET_MISSING, "spec.server.tls.secretName", TLS,
     "does not exist or lacks tls.crt or tls.key"),
    ("tls-bad-pem", env.TLS_SECRET_INVALID, "spec.server.tls.secretName", TLS,
     "does not hold a PEM certificate"),
    ("tls-key-mismatch", env.TLS_SECRET_INVALID, "spec.server.tls.secretName", TLS,
     "key values mismatch"),
])
def test_an_unusable_secret_is_a_condition_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, reason: str, field: str,
        secret: str, says: str) -> None:
    message = termination_message(tmp_path, monkeypatch, *files(tmp_path, kind))
    assert "\n" not in message and message.startswith("model-server serve: ")
    ready = ready_condition(message)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert ready["message"].startswith(f'Secret "{secret}" ({field}) '), ready["message"]
    assert says in ready["message"], ready["message"]
    assert message in ready["message"]  # the server's own words follow, for the details


def test_other_exits_with_code_2_stay_model_load_failed() -> None:
    ready = ready_condition("model-server serve: invalid settings: MODEL_SERVER_PORT: bad")
    assert ready["reason"] == "ModelLoadFailed"
    assert "Secret" not in ready["message"]
