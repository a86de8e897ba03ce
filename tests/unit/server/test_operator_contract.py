"""Contract: every MODEL_SERVER_* variable the operator writes is a setting the server reads.

`Settings` ignores unknown variables (the image also runs outside Kubernetes), so a typo in
the operator's builders would be dropped silently; this test catches it.
"""

from __future__ import annotations

from msv_operator import builders as b

from model_server.settings import Settings


def _every_env_name() -> set[str]:
    spec = {
        "apiVersion": f"{b.GROUP}/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
        "spec": {
            "model": {
                "uri": "s3://bucket/m",
                "framework": "transformers",
                "task": "text-generation",
            },
            "gpu": {"count": 1},
            "server": {
                "torchThreads": 2,
                "batching": {"maxBatchSize": 4, "maxDelayMs": 1},
                "auth": {"tokenSecret": "t", "protectMetrics": True},
                "tls": {"secretName": "tls"},
            },
            "variants": [
                {
                    "name": "q",
                    "optimization": {
                        "quantization": "dynamic-int8",
                        "pruning": {"method": "structured", "amount": 0.2},
                    },
                }
            ],
        },
    }
    opts = b.BuildOptions(
        default_image="i", default_gpu_image="g", service_monitor=True, gateway_api=True
    )
    names: set[str] = set()
    for obj in b.build_all(spec, opts):
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            names.update(e["name"] for e in container.get("env", []))
    return {n for n in names if n.startswith("MODEL_SERVER_")}


def test_operator_writes_only_settings_the_server_understands() -> None:
    known = {"MODEL_SERVER_" + name.upper() for name in Settings.model_fields}
    written = _every_env_name()
    assert "MODEL_SERVER_AUTH_TOKENS" in written and "MODEL_SERVER_GRPC_PORT" in written
    assert written <= known, f"unknown to the server: {sorted(written - known)}"
