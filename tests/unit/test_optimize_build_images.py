"""`model-server optimize build` on image data: the image data set's reader, the recipes on a
tiny ViT image classifier, TensorFlow's full-integer TFLite end to end (published to a
file:// store, served by the TensorFlow backend) and the refusals naming recipe, framework and
task."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_server.optimize import images, publish
from model_server.optimize.build import build
from model_server.optimize.recipe import BuildError
from msv_contract import capabilities as caps
from msv_contract import pipeline
from tests import modelfactory

SHA_SOURCE = "a" * 64
SHA_DATA = "c" * 64
VIT = {"framework": "transformers", "task": "image-classification", "heldOut": 0.25, "seed": 0}
PNG = b"\x89PNG\r\n\x1a\n"
KERAS = {"framework": "tensorflow", "task": "image-classification", "heldOut": 0.25, "seed": 0}


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _build(source: Path, data: Path, recipe: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return build(source=source, data=data, recipe_json=json.dumps(recipe),
                 source_sha256=SHA_SOURCE, data_sha256=SHA_DATA,
                 publish_uri=(tmp_path / "store").as_uri(), work=tmp_path / "work",
                 latency_repeats=1, out=io.StringIO())


def _report(result: dict[str, Any]) -> dict[str, Any]:
    path = Path(result["reportUri"].removeprefix("file://"))
    return dict(json.loads(path.read_text()))


def _unpack(result: dict[str, Any], into: Path) -> Path:
    archive = Path(result["artifactUri"].removeprefix("file://"))
    assert publish.sha256_file(archive) == result["sha256"]
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


# ---- the data set ---------------------------------------------------------------------------

def test_a_labelled_archive_is_read_in_path_order_with_label_names_or_indices(
        tmp_path: Path) -> None:
    png = [modelfactory.make_png(8, 8, seed=i) for i in range(4)]
    archive = _tar(tmp_path / "images.tar.gz", {
        "./dog/b.png": png[1], "cat/a.png": png[0], "2/c.PNG": png[2], "cat/.hidden.png": png[3],
        "README.txt": b"not an image"})
    data = images.read_image_data(archive, {"cat": 0, "dog": 1, "bird": 2}, 3)
    assert data.labels == [2, 0, 1]  # 2/c.PNG, cat/a.png, dog/b.png
    assert data.items == [png[2], png[0], png[1]]
    # a directory holding the one archive reads the same
    held = tmp_path / "held"
    held.mkdir()
    (held / "images.tar.gz").write_bytes(archive.read_bytes())
    assert images.read_image_data(held, {"cat": 0, "dog": 1, "bird": 2}, 3).items == data.items


def test_an_archive_the_jobs_pull_unpacked_reads_as_the_archive(tmp_path: Path) -> None:
    """The build Job's data pull (``model-server pull``, sha256-checked) unpacks an archive and
    drops it; the build reads the directory it leaves (the operator's ``--data``) as the
    archive itself."""
    from model_server.pull import pull

    pixels, labels = modelfactory.colour_images(6, seed=3)
    archive = tmp_path / "colours.tar.gz"
    archive.write_bytes(modelfactory.colour_image_archive(pixels, labels))
    digest = publish.sha256_file(archive)
    pulled = pull(archive.as_uri(), tmp_path / "data", sha256=digest)
    assert not (pulled / archive.name).exists()
    want = images.read_image_data(archive, {}, 3)
    got = images.read_image_data(pulled, {}, 3)
    assert got.items == want.items and got.labels == want.labels
    assert sorted(got.labels) == sorted(int(y) for y in labels)  # every image, labelled


def test_a_directory_tree_of_unlabelled_images_is_read(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(8))
    data = images.read_image_data(tmp_path, {}, 3)
    assert len(data) == 3 and data.labels is None


@pytest.mark.parametrize(("files", "cause"), [
    ({"a.png": PNG, "cat/b.png": PNG}, "cat/b.png: mixes labelled"),
    ({"a/b/c.png": PNG, "a/b/d.png": PNG}, "a/b/c.png: expected name.png or <label>/name.png"),
    ({"a.png": b"GIF89a", "b.png": b"GIF89a"}, "a.png is not a PNG or JPEG"),
    ({"fish/a.png": PNG, "cat/b.png": PNG}, "fish/a.png: label 'fish' is not one of"),
    ({"a.png": PNG}, "holds 1 image"),
])
def test_bad_image_data_is_refused_naming_the_image(tmp_path: Path, files: dict[str, bytes],
                                                     cause: str) -> None:
    archive = _tar(tmp_path / "d.tar.gz", files)
    with pytest.raises(BuildError, match=cause):
        images.read_image_data(archive, {"cat": 0}, 2)


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("a\nb\n")
    with pytest.raises(BuildError, match="must be a tar archive"):
        images.read_image_data(tmp_path / "x.txt", {}, 2)
    (tmp_path / "y.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(BuildError, match="not a readable tar archive"):
        images.read_image_data(tmp_path / "y.tar", {}, 2)


# ---- transformers image classification --------------------------------------------------------

@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("vit") / "model"
    modelfactory.make_image_classifier(path)
    return path


@pytest.fixture(scope="module")
def vit_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vitdata")
    names = ("cat", "dog", "bird")
    return _tar(root / "images.tar.gz", {
        f"{names[i % 3]}/{i:03d}.png": modelfactory.make_png(40, 24, seed=i) for i in range(24)})


def test_vit_static_int8_is_calibrated_on_images_and_served_calibrated(
        vit: Path, vit_data: Path, tmp_path: Path) -> None:
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions
    from model_server.optimize import static_int8

    result = _build(vit, vit_data, {**VIT, "recipe": "static-int8"}, tmp_path)
    report = _report(result)
    assert report["data"] == {"kind": "images", "examples": 24, "train": 18, "heldOut": 6,
                              "labels": True}
    assert report["details"]["calibrationSamples"] == 18
    assert 0.0 <= report["summary"]["accuracy"] <= 1.0
    assert report["result"]["agreement"] >= 0.5
    model_dir = _unpack(result, tmp_path / "served")
    assert (model_dir / static_int8.CALIBRATION_FILE).is_file()
    assert (model_dir / "preprocessor_config.json").is_file()
    backend = create_backend("transformers")
    backend.load(model_dir, LoadOptions(task="image-classification", device="cpu"))
    out = backend.predict({"image": np.array([modelfactory.make_png(seed=99)], dtype=object)})
    assert out["logits"].shape == (1, 3)
    assert backend.info().extra.get("int8")


def test_vit_prune_recover_and_distill_build_smaller_image_models(
        vit: Path, vit_data: Path, tmp_path: Path) -> None:
    pruned = _report(_build(vit, vit_data, {**VIT, "recipe": "prune-recover", "amount": 0.5,
                                           "steps": 3, "batchSize": 8}, tmp_path / "p"))
    assert pruned["details"]["intermediateSize"] == 32  # 64 neurons, half removed
    assert pruned["summary"]["parameterRatio"] < 1
    # ranked on the images' activations (the ViT blocks' FFNs), recovered as a fine-tune
    details = pruned["details"]
    assert details["ranking"] == "activation"
    assert (details["training"]["schedule"], details["training"]["dropout"]) == (
        "warmup-cosine", False)
    assert set(pruned["result"]["latencyMsP50"]) == {"batch1", "batch8"}
    by_weight = _report(_build(vit, vit_data, {**VIT, "recipe": "prune-recover", "amount": 0.5,
                                              "ranking": "weight", "steps": 3, "batchSize": 8},
                               tmp_path / "w"))
    assert by_weight["details"]["ranking"] == "weight"
    # weight ranking is what load-time pruning does: the same model before the refit
    # of the down-projections, which then brings both rankings closer to the source
    weighted = by_weight["details"]
    assert weighted["reconstruction"]["beforeKlToSource"] == weighted["pruneOnlyKlToSource"]
    assert details["reconstruction"]["beforeKlToSource"] != details["pruneOnlyKlToSource"]
    for d in (details, weighted):
        assert d["beforeRecoveryKlToSource"] < d["reconstruction"]["beforeKlToSource"]
        assert d["reconstruction"]["unexplainedAfter"] < d["reconstruction"]["unexplainedBefore"]
    student = _report(_build(vit, vit_data, {**VIT, "recipe": "distill", "steps": 3,
                                            "student": {"layers": 1}}, tmp_path / "d"))
    assert student["details"]["layers"] == 1 and student["details"]["initialisedFrom"] == [1]
    assert student["summary"]["parameterRatio"] < 1


# ---- TensorFlow: full-integer TFLite -----------------------------------------------------------

@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    path = tmp_path_factory.mktemp("cnn") / "model"
    _, accuracy = modelfactory.make_trained_keras_cnn(path, "keras", epochs=2)
    assert accuracy > 0.9
    return path


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("colour") / "colours.tar.gz"
    path.write_bytes(modelfactory.colour_image_archive(*modelfactory.colour_images(48, seed=7)))
    return path


def test_keras_static_int8_publishes_a_full_integer_tflite_model_the_server_serves(
        keras_cnn: Path, colour_data: Path, tmp_path: Path) -> None:
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions

    result = _build(keras_cnn, colour_data, {**KERAS, "recipe": "static-int8"}, tmp_path)
    store = tmp_path / "store" / result["key"]
    assert sorted(p.name for p in store.iterdir()) == sorted(
        [pipeline.ARTIFACT_FILE, pipeline.REPORT_FILE, pipeline.MANIFEST_FILE])
    report = _report(result)
    details = report["details"]
    assert details["calibrationSamples"] == 36 and details["floatOps"] == []
    assert {"CONV_2D", "FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"} <= set(details["ops"])
    for side in ("source", "result"):
        assert set(report[side]["latencyMsP50"]) == {"batch1", "batch8"}
    summary = result["summary"]
    assert summary["agreement"] >= 0.9 and summary["accuracy"] >= 0.9
    assert summary["baselineAccuracy"] >= 0.9
    assert summary["sizeBytes"] < summary["baselineSizeBytes"]
    model_dir = _unpack(result, tmp_path / "served")
    assert [p.name for p in model_dir.iterdir()] == ["model.tflite"]
    served, source = create_backend("tensorflow"), create_backend("tensorflow")
    served.load(model_dir, LoadOptions(device="cpu"))
    source.load(keras_cnn, LoadOptions(device="cpu"))
    assert served.inputs() == source.inputs() and served.outputs() == source.outputs()
    x, y = modelfactory.colour_images(8, seed=11)
    out = served.predict({"image": x})["probabilities"]
    assert out.dtype == np.float32 and out.shape == (8, 3)
    assert (out.argmax(-1) == y).mean() >= 0.75
    # the same recipe is reused, not rebuilt
    again = _build(keras_cnn, colour_data, {**KERAS, "recipe": "static-int8"}, tmp_path)
    assert again["key"] == result["key"] and again["summary"]["reused"] is True


def test_input_range_changes_the_key_and_applies_to_tensorflow_only(
        vit: Path, vit_data: Path, tmp_path: Path) -> None:
    a = pipeline.artifact_key(SHA_SOURCE, {**KERAS, "recipe": "static-int8"}, SHA_DATA)
    b = pipeline.artifact_key(SHA_SOURCE, {**KERAS, "recipe": "static-int8",
                                           "inputRange": [-1, 1]}, SHA_DATA)
    assert a != b
    with pytest.raises(BuildError, match=r"recipe\.inputRange applies to framework tensorflow"):
        _build(vit, vit_data, {**VIT, "recipe": "static-int8", "inputRange": [-1, 1]}, tmp_path)


@pytest.mark.parametrize(("recipe", "cause"), [
    ({**KERAS, "recipe": "prune-recover", "amount": 0.5},
     "recipe 'prune-recover' is not implemented for framework 'tensorflow' task "
     "'image-classification'"),
    ({**KERAS, "recipe": "static-int8", "task": None},
     "recipe 'static-int8' is not implemented for framework 'tensorflow' task None"),
    ({**VIT, "recipe": "distill", "task": "text-generation", "student": {"layers": 1}},
     "recipe 'distill' is not implemented for framework 'transformers' task 'text-generation'"),
    ({**KERAS, "recipe": "static-int8", "inputRange": [1, 0]}, "recipe.inputRange must be"),
])
def test_unsupported_recipes_are_refused_naming_recipe_framework_and_task(
        tmp_path: Path, recipe: dict[str, Any], cause: str) -> None:
    with pytest.raises(BuildError, match=cause.replace("(", r"\(")):
        _build(tmp_path, tmp_path, recipe, tmp_path)


def test_a_tflite_source_is_refused(keras_cnn: Path, colour_data: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.tflite").write_bytes(b"TFL3")
    with pytest.raises(BuildError, match="already a TFLite model"):
        _build(source, colour_data, {**KERAS, "recipe": "static-int8"}, tmp_path)


def test_the_builds_pairs_are_the_capability_tables() -> None:
    pairs = {(r, f, t) for r, rec in caps.RECIPES.items() for f, t in rec.targets}
    assert ("static-int8", "tensorflow", "image-classification") in pairs
    assert not any(f == "tensorflow" for r, f, _ in pairs if r != "static-int8")
    assert caps.recipe_problem("tensorflow", None, "static-int8") is not None
    assert caps.recipe_problem("tensorflow", "image-classification", "static-int8") is None
