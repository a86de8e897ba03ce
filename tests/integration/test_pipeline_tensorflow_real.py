"""The optimization pipeline for a TensorFlow model on real pods: ``static-int8``, a
full-integer TFLite model (docs/optimization.md, "Built variants" and the recipe table).

The source is a small Keras image classifier (tests/modelfactory.py, trained here on its
synthetic colour images, saved as ``.keras``) in the S3 store; the calibration data is a
tar.gz of labelled PNGs (``<class>/<n>.png``) of the same distribution. The operator's Job runs
``model-server optimize build`` in the TensorFlow runtime image on the real node (the image
is chosen by the framework's runtime, as for the variants' pods): it pulls both (checked),
calibrates the int8 activation ranges on the training split, evaluates on the held-out one and
publishes ``model.tar.gz`` (holding ``model.tflite``), ``report.json`` and ``MANIFEST``. The
variant then serves exactly that artifact, beside the baseline, under the source's input
and output names.

Helpers (the build's spec, the waits, the store check) and the operator fixture are
test_pipeline_real.py's; the TensorFlow image and server settings test_runtimes_real.py's.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manifests import model, modelservice
from msv_operator import kube
from msv_operator.config import DEFAULT_IMAGES
from operator_harness import RunningOperator, condition
from realpods import (
    cluster_ip,
    http_json,
    stores,  # noqa: F401 (the fixture: the in-cluster model stores)
    wait_ready,
)
from test_pipeline_real import (  # noqa: F401 (operator: the fixture)
    build_of,
    jobs,
    operator,
    stored_artifact,
    variant,
    wait_published,
)
from test_runtimes_real import TF_IMAGE, TF_SERVER
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores
from msv_contract import capabilities as caps
from msv_contract import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]

NAME = "tfpipe"
BUILT = "int8"
IMAGES = 48
"""Calibration data: 80% (the default heldOut is 0.2) calibrate, the rest is the held-out set."""
BATCH = 8
AGREEMENT = 7
"""Of BATCH requests: argmax agreement of the full-integer variant with the float baseline,
and each variant's argmax against the images' classes (the source learns them at >= 0.9)."""


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(the source's model directory, holding ``model.keras``; the trained Keras model)."""
    from modelfactory import make_trained_keras_cnn, torch_before_tensorflow

    torch_before_tensorflow()  # this worker may run torch tests after this module
    path = tmp_path_factory.mktemp("tf-pipeline") / "cnn"
    trained, accuracy = make_trained_keras_cnn(path, "keras")
    assert accuracy >= 0.9, f"the synthetic task did not train ({accuracy})"
    return path, trained


def metadata(ip: str) -> dict[str, Any]:
    return dict(http_json(f"http://{ip}/v2/models/{NAME}"))


def infer(ip: str, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The one output of an OIP v2 infer request of the images ``x``, sent as the model's
    metadata says its input is named and typed."""
    (tensor,) = meta["inputs"]
    body = {"inputs": [{"name": tensor["name"], "shape": list(x.shape),
                        "datatype": tensor["datatype"], "data": x.ravel().tolist()}]}
    (out,) = http_json(f"http://{ip}/v2/models/{NAME}/infer", body, timeout=30)["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_a_static_int8_build_of_a_keras_model_serves_a_full_integer_tflite_model(
        cluster: lc.Cluster, stores: None, keras_cnn: tuple[Path, Any],  # noqa: F811
        real_namespace: str, operator: RunningOperator, k: kube.Kube) -> None:  # noqa: F811
    from modelfactory import colour_image_archive, colour_images

    from model_server.optimize.tflite_int8 import MODEL_FILE, op_types

    ns = real_namespace
    path, trained = keras_cnn
    k.apply(modelstores.credentials_secret("s3-creds", ns))
    source = modelstores.publish_s3(path, "models", f"{ns}/cnn.tar.gz")
    data = modelstores.put_s3("data", f"{ns}/colours.tar.gz",
                              colour_image_archive(*colour_images(IMAGES, seed=7)))
    modelstores.ensure_bucket("built")
    build = build_of(ns, data, "static-int8", steps=1)
    k.apply(modelservice(
        NAME, ns, model=model(uri=source[0], sha256=source[1], framework="tensorflow",
                              task="image-classification", credentialsSecret="s3-creds"),
        server=dict(TF_SERVER), variants=[{"name": "baseline"}, {"name": BUILT, "build": build}],
        traffic={"baseline": 100}))

    # the image the operator chooses for the framework's runtime: the Job runs in it
    runtime = caps.FRAMEWORKS["tensorflow"].runtime
    assert str(DEFAULT_IMAGES[runtime].cpu) == TF_IMAGE
    assert f"/{caps.image_name(runtime)}:" in TF_IMAGE, TF_IMAGE
    assert all(str(i.cpu) != TF_IMAGE for r, i in DEFAULT_IMAGES.items() if r != runtime)
    job = wait_for("the build Job", lambda: jobs(k, ns) or None, timeout=60)[0]
    assert job.startswith(f"{NAME}-{BUILT}-build-"), job
    pod = ((k.get("batch/v1", "Job", ns, job) or {})["spec"]["template"]["spec"])
    assert {c["image"] for c in [*pod["initContainers"], *pod["containers"]]} == {TF_IMAGE}

    published = wait_published(k, ns, NAME, BUILT)
    ms = wait_ready(k, ns, NAME, timeout=420)
    assert condition(ms, "Built")["status"] == "True"

    # provenance, verified against the store
    record = variant(k, ns, NAME, BUILT)["provenance"]
    key = published["key"]
    assert record["key"] == key and record["sourceSha256"] == source[1]
    assert record["dataSha256"] == data[1] and record["job"] == job
    artifact = stored_artifact(ns, record)
    with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:gz") as tar:
        assert tar.getnames() == [MODEL_FILE], tar.getnames()
        handle = tar.extractfile(MODEL_FILE)
        assert handle is not None
        flatbuffer = handle.read()
    # a full-integer model: beyond the float input's quantize and the float output's
    # dequantize, every op runs on int8 tensors (read here from the artifact's own bytes)
    ops = op_types(flatbuffer)
    assert ops, "the TFLite interpreter here cannot list the flatbuffer's ops"
    assert ops["floatOps"] == [], ops
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "FULLY_CONNECTED"} <= set(ops["ops"]), ops
    s3 = modelstores.s3_client()
    report = json.loads(s3.get_object(Bucket="built", Key=f"{ns}/{key}/{pipeline.REPORT_FILE}")
                        ["Body"].read())
    assert report["key"] == key and report["recipe"]["recipe"] == "static-int8"
    assert report["recipe"]["framework"] == "tensorflow"
    assert report["details"]["floatOps"] == [], report["details"]
    assert report["details"]["sourceFormat"] == "keras"
    assert report["details"]["calibrationSamples"] == report["data"]["train"] > 0
    assert report["data"]["examples"] == IMAGES and report["data"]["labels"] is True
    headline = record["report"]
    assert 0 <= headline["agreement"] <= 1 and headline["agreement"] >= 0.8, headline
    assert headline["examples"] == report["data"]["heldOut"], headline
    assert headline["sizeBytes"] < headline["baselineSizeBytes"], headline
    assert headline["accuracy"] >= 0.8, headline

    # both variants run the TensorFlow image; the built one pulls exactly that artifact
    deployments = {v: (k.get("apps/v1", "Deployment", ns, f"{NAME}-{v}") or {})["spec"]
                   ["template"]["spec"] for v in ("baseline", BUILT)}
    for spec in deployments.values():
        assert spec["containers"][0]["image"] == TF_IMAGE
        assert spec["initContainers"][0]["image"] == TF_IMAGE
    pull = deployments[BUILT]["initContainers"][0]["args"]
    assert pull[1] == record["artifactUri"], pull
    assert pull[pull.index("--sha256") + 1] == record["artifactSha256"], pull

    # the built variant answers as the source is called (same names and types), and agrees
    x, labels = colour_images(BATCH, seed=4242)
    expected = np.asarray(trained.predict(x, verbose=0))
    answers = {}
    metas = {}
    for v in ("baseline", BUILT):
        ip = cluster_ip(k, ns, f"{NAME}-{v}")
        metas[v] = metadata(ip)
        (tensor,) = metas[v]["inputs"]
        assert tensor["datatype"] == "FP32" and tensor["shape"][1:] == [32, 32, 3], tensor
        answers[v] = infer(ip, metas[v], x)
        assert answers[v].shape == (BATCH, 3), answers[v].shape
        assert int(np.sum(answers[v].argmax(-1) == labels)) >= AGREEMENT, (v, answers[v])
    params = metas[BUILT]["parameters"]
    assert (params["variant"], params["format"], params["runtime"]) == (BUILT, "tflite", "tflite")
    assert metas["baseline"]["parameters"]["runtime"] == "tf"
    assert metas[BUILT]["inputs"] == metas["baseline"]["inputs"]
    assert metas[BUILT]["outputs"] == metas["baseline"]["outputs"]
    np.testing.assert_allclose(answers["baseline"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(answers[BUILT], expected, atol=0.1)
    agree = int(np.sum(answers[BUILT].argmax(-1) == answers["baseline"].argmax(-1)))
    assert agree >= AGREEMENT, (answers[BUILT], answers["baseline"])
