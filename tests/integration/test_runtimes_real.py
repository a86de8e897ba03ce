"""TensorFlow ModelServices whose pods really run, in the TensorFlow runtime image.

The operator picks the model-server image by the framework's runtime (capability table):
``model-server-tensorflow`` for framework ``tensorflow``, built locally and imported into the
real node's containerd like the others. A SavedModel and a Keras (``.keras``) image
classifier (tests/modelfactory.py, trained on its synthetic colour images), each with a
``dynamic-int8`` variant (a TFLite model), are published to the in-cluster HTTP store; every
variant's pod must become Ready in that image and answer, through the ModelService's
Services and ``tritonclient.http``, what the model computes here in the test. The runtime
images carry only their own framework, and a GPU TensorFlow ModelService for which no
TensorFlow GPU image is configured is refused before any pod starts.

Fixtures and helpers are test_real_pods.py's (the model stores, a namespace-scoped operator,
the waits on Ready and on a routed Service).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manifests import INT8, MS_API, model, modelservice
from msv_operator import kube
from msv_operator.config import DEFAULT_IMAGES
from operator_harness import RunningOperator, condition
from test_real_pods import SERVER, cluster_ip, operator, stores, wait_ready  # noqa: F401
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import images, modelstores, paths
from localcluster.images import containerd
from localcluster.images.host import need_tool
from msv_contract import capabilities as caps

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]

TF_IMAGE = str(DEFAULT_IMAGES["tensorflow"].cpu)
# The model server ignores torchThreads for TensorFlow; the rest of the shared small requests.
TF_SERVER = {k: v for k, v in SERVER.items() if k != "torchThreads"}
BATCH = 8  # within the server's default maxBatchSize
INT8_AGREEMENT = 7  # of BATCH: argmax of the TFLite int8 variant vs the float model


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """format -> (model directory, the trained Keras model) for "savedmodel" and "keras"."""
    from modelfactory import make_trained_keras_cnn

    out = {}
    for fmt in ("savedmodel", "keras"):
        path = tmp_path_factory.mktemp("tf-models") / fmt
        trained, accuracy = make_trained_keras_cnn(path, fmt)
        assert accuracy >= 0.9, f"{fmt}: the synthetic task did not train ({accuracy})"
        out[fmt] = (path, trained)
    return out


def tf_modelservice(name: str, ns: str, uri: str, sha256: str, **fields: Any) -> dict[str, Any]:
    return modelservice(name, ns, model=model(uri=uri, sha256=sha256, framework="tensorflow",
                                              task=None),
                        server=dict(TF_SERVER), **fields)


def local_int8(path: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The server's own dynamic-int8 conversion, run here (same TensorFlow as the image)."""
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions

    backend = create_backend("tensorflow")
    backend.load(path, LoadOptions(quantization="dynamic-int8"))
    return lambda x: backend.predict({"image": x})  # type: ignore[no-any-return]


def infer(ip: str, name: str, x: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(model metadata, every output) of one request through the Service at ``ip``."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{ip}:80", network_timeout=60.0)
    meta = client.get_model_metadata(name)
    (tensor,) = meta["inputs"]
    inp = httpclient.InferInput(tensor["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp])
    return meta, {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}


@pytest.mark.parametrize("fmt", ["savedmodel", "keras"])
def test_tensorflow_classifier_and_its_tflite_variant_serve_in_the_tensorflow_image(
        cluster: lc.Cluster, stores: None, classifiers: dict[str, tuple[Path, Any]],  # noqa: F811
        real_namespace: str, operator: RunningOperator, k: kube.Kube, fmt: str) -> None:  # noqa: F811
    from modelfactory import colour_images

    ns = real_namespace
    path, trained = classifiers[fmt]
    name = f"tf-{fmt}"
    uri, digest = modelstores.publish_http(path, f"{ns}-{fmt}")
    k.apply(tf_modelservice(name, ns, uri, digest, variants=[{"name": "baseline"}, INT8],
                            traffic={"baseline": 50, "int8": 50}))
    wait_ready(k, ns, name, timeout=420)

    pods = k.list("v1", "Pod", ns, f"serving.modelservice.dev/modelservice={name}")
    assert {p["metadata"]["labels"]["serving.modelservice.dev/variant"] for p in pods} == {
        "baseline", "int8"}
    for pod in pods:
        server = pod["status"]["containerStatuses"][0]
        assert server["ready"], server
        assert pod["spec"]["containers"][0]["image"] == TF_IMAGE
        assert pod["spec"]["initContainers"][0]["image"] == TF_IMAGE
        assert "sha256:" in server["imageID"], server  # containerd's image, really run

    x, labels = colour_images(BATCH, seed=4242)
    expected = np.asarray(trained.predict(x, verbose=0))
    int8_here = local_int8(path)(x)
    for variant, runtime in (("baseline", "tf"), ("int8", "tflite")):
        meta, outputs = infer(cluster_ip(k, ns, f"{name}-{variant}"), name, x)
        params = meta["parameters"]
        assert (params["variant"], params["format"], params["runtime"]) == (variant, fmt, runtime)
        assert params["quantization"] == ("dynamic-int8" if variant == "int8" else "none")
        assert meta["platform"] == caps.FRAMEWORKS["tensorflow"].platform
        (probs,) = outputs.values()
        assert probs.shape == (BATCH, 3)
        if variant == "baseline":
            np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)
        else:
            (here,) = int8_here.values()
            np.testing.assert_allclose(probs, here, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(probs, expected, atol=0.05)
            assert int(np.sum(probs.argmax(-1) == expected.argmax(-1))) >= INT8_AGREEMENT
        assert int(np.sum(probs.argmax(-1) == labels)) >= INT8_AGREEMENT, (variant, probs)

    # the ModelService's stable Service answers from both variants, each correctly
    ip = cluster_ip(k, ns, name, endpoints=2)
    seen = set()
    for _ in range(30):
        meta, outputs = infer(ip, name, x)
        (probs,) = outputs.values()
        np.testing.assert_allclose(probs, expected, atol=0.05)
        seen.add(meta["parameters"]["variant"])
        if seen == {"baseline", "int8"}:
            break
    assert seen == {"baseline", "int8"}


FRAMEWORK_MODULES = {"torch": ("torch", "transformers"), "tensorflow": ("tensorflow", "keras")}
"""What each runtime's image must have, and the others must not."""


def _probe_pod(name: str, ns: str, image: str) -> dict[str, Any]:
    """A Pod (Pod Security restricted) that prints which ML frameworks the image has."""
    modules = (*sorted(m for ms in FRAMEWORK_MODULES.values() for m in ms), "model_server")
    code = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None "
            f"for m in {modules!r}}}))")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "probe", "image": image, "imagePullPolicy": "IfNotPresent",
                         "command": ["python", "-c", code],
                         "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}}}]}}


@pytest.mark.parametrize("runtime", caps.RUNTIME_NAMES)
def test_a_runtime_image_carries_only_its_own_framework(
        cluster: lc.Cluster, real_namespace: str, k: kube.Kube, runtime: str) -> None:
    assert set(FRAMEWORK_MODULES) == set(caps.RUNTIME_NAMES), "name each runtime's modules"
    ns = real_namespace
    pod = f"probe-{runtime}"
    k.apply(_probe_pod(pod, ns, str(DEFAULT_IMAGES[runtime].cpu)))

    def done() -> str | None:  # a RuntimeError ends the wait at once
        status = (k.get("v1", "Pod", ns, pod) or {}).get("status") or {}
        if status.get("phase") == "Failed":
            raise RuntimeError(f"{pod} failed: {status}")
        waiting = [(c.get("state") or {}).get("waiting") or {}
                   for c in status.get("containerStatuses") or ()]
        if any(w.get("reason") in ("ErrImagePull", "ImagePullBackOff") for w in waiting):
            raise RuntimeError(f"{DEFAULT_IMAGES[runtime].cpu} is not in the node's "
                               f"containerd (python -m localcluster images load): {waiting}")
        return "done" if status.get("phase") == "Succeeded" else None
    wait_for(f"{pod} to finish", done, timeout=180, interval=1)
    logs = cluster.kubectl_run("logs", "-n", ns, pod).stdout
    found = json.loads(logs.strip().splitlines()[-1])
    assert found.pop("model_server") is True
    own = set(FRAMEWORK_MODULES[runtime])
    assert {m for m, present in found.items() if present} == own, found


def test_images_no_recipe_makes_are_removed_from_the_node(cluster: lc.Cluster) -> None:
    """An image of this project that no recipe makes any more (the single model-server image
    of 0.1.0 is one) leaves the node's containerd on the next load; the others stay."""
    socket = paths.containerd_socket()
    kept = images.REFS["pause"]
    retired = kept.replace("/pause:", "/retired-model-server:")
    ctr = [need_tool("ctr", "containerd"), "--address", str(socket), "-n", "k8s.io"]
    subprocess.run([*ctr, "images", "tag", "--force", kept, retired], check=True,
                   capture_output=True)
    assert retired in containerd.containerd_images(socket)
    said: list[str] = []
    assert containerd.remove_stale_images(socket, out=said.append) == [retired]
    have = containerd.containerd_images(socket)
    assert retired not in have and kept in have
    assert any("retired-model-server" in line for line in said), said
    assert containerd.remove_stale_images(socket, out=said.append) == []


def test_a_gpu_tensorflow_modelservice_without_a_gpu_image_is_refused_before_any_pod(
        cluster: lc.Cluster, real_namespace: str, operator: RunningOperator,  # noqa: F811
        k: kube.Kube) -> None:
    ns = real_namespace
    k.apply(tf_modelservice("tf-gpu", ns, "http://store.invalid/m.tar.gz", "0" * 64,
                            gpu={"count": 1}))

    def refused() -> dict[str, Any] | None:
        c = condition(k.get(MS_API, "ModelService", ns, "tf-gpu"), "Ready")
        return c if c.get("reason") == "NoServingImage" else None
    c = wait_for("tf-gpu: Ready/NoServingImage", refused, timeout=60, interval=0.5)
    assert c["status"] == "False"
    assert c["message"].startswith("spec.model.framework: tensorflow"), c
    assert "MSV_TENSORFLOW_GPU_IMAGE" in c["message"], c
    ms = k.get(MS_API, "ModelService", ns, "tf-gpu")
    assert condition(ms, "Stalled")["status"] == "True"
    time.sleep(3)  # a few resync passes (2 s): still nothing built
    selector = "serving.modelservice.dev/modelservice=tf-gpu"
    assert k.list("apps/v1", "Deployment", ns, selector) == []
    assert k.list("v1", "Pod", ns, selector) == []
