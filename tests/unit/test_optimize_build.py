"""`model-server optimize build`: each recipe on a tiny trained classifier, publishing, reuse,
progress lines and the one-line causes of failed builds (seconds of training each)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from model_server.optimize import publish
from model_server.optimize.build import build, interleaved_latency
from model_server.optimize.recipe import BuildError
from msv_contract import pipeline
from tests import modelfactory

pytest.importorskip("transformers")

SHA_SOURCE = "a" * 64
SHA_DATA = "b" * 64
BASE = {"framework": "transformers", "task": "text-classification", "heldOut": 0.25,
        "seed": 0, "maxLength": 32}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-layer classifier whose FFN carries signal: its FFN weights start 10x larger
    than BERT's initialisation (the tiny model's FFN otherwise contributes next to nothing to
    its saturated logits, and pruning it would change nothing to recover)."""
    import torch
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("source") / "model"
    model = modelfactory.make_text_classifier(path, save=False, intermediate_size=64)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight.mul_(10)
            layer.output.dense.weight.mul_(10)
    tokenizer = AutoTokenizer.from_pretrained(path)
    accuracy = modelfactory.train_text_classifier(model, tokenizer, steps=40)
    model.save_pretrained(path, safe_serialization=True)
    assert accuracy > 0.9
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    texts, labels = modelfactory.sentiment_sentences(96, seed=3, length=6)
    plain = root / "plain.txt"
    plain.write_text("\n".join(texts) + "\n")
    labelled = root / "labelled.tsv"
    names = ("NEGATIVE", "POSITIVE")
    labelled.write_text("".join(f"{names[y]}\t{t}\n" for t, y in zip(texts, labels, strict=True)))
    return {"plain": plain, "labelled": labelled}


def _build(source: Path, data: Path, recipe: dict[str, Any], tmp_path: Path,
           store: Path | None = None, **kw: Any) -> dict[str, Any]:
    return build(source=source, data=data, recipe_json=json.dumps({**BASE, **recipe}),
                 source_sha256=SHA_SOURCE, data_sha256=SHA_DATA,
                 publish_uri=(store or tmp_path / "store").as_uri(), work=tmp_path / "work",
                 latency_repeats=1, **kw)


def _unpack(result: dict[str, Any], into: Path) -> Path:
    archive = Path(result["artifactUri"].removeprefix("file://"))
    assert publish.sha256_file(archive) == result["sha256"]
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def _served(model_dir: Path) -> Any:
    """The model loaded through the server's normal backend path (as a variant would be)."""
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions

    backend = create_backend("transformers")
    backend.load(model_dir, LoadOptions(device="cpu"))
    return backend


def _report(result: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(Path(result["reportUri"].removeprefix("file://")).read_text()))


def test_static_int8_publishes_manifest_last_loads_calibrated_and_is_reused(
    source: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    written: list[str] = []
    put = publish.Store.put_file

    def record(self: publish.Store, name: str, path: Path) -> None:
        written.append(name)
        put(self, name, path)

    monkeypatch.setattr(publish.Store, "put_file", record)
    recipe = {"recipe": "static-int8", "calibrationSamples": 32}
    result = _build(source, data["labelled"], recipe, tmp_path)

    key = pipeline.artifact_key(SHA_SOURCE, {**BASE, **recipe}, SHA_DATA)
    assert result["key"] == key
    assert set(pipeline.RESULT_KEYS) <= set(result)
    assert written == [pipeline.ARTIFACT_FILE, pipeline.REPORT_FILE, pipeline.MANIFEST_FILE]
    assert result["artifactUri"].endswith(f"/{key}/{pipeline.ARTIFACT_FILE}")
    report = _report(result)
    assert report["key"] == key and report["codeVersion"] == pipeline.CODE_VERSION
    assert report["sourceSha256"] == SHA_SOURCE and report["dataSha256"] == SHA_DATA
    assert report["data"] == {"kind": "text", "examples": 96, "train": 72, "heldOut": 24,
                              "labels": True}
    assert report["result"]["int8"] == "static"
    assert report["result"]["agreement"] >= 0.9
    assert "accuracy" in report["result"] and report["job"]["cpuSeconds"] > 0
    backend = _served(_unpack(result, tmp_path / "unpacked"))
    assert backend.info().extra["int8"] == "static"
    out = backend.predict({"text": _texts(["i love this great movie"])})
    assert out["label"][0] in (b"POSITIVE", "POSITIVE")
    phases = [json.loads(line.removeprefix(pipeline.PROGRESS_PREFIX))["phase"]
              for line in capsys.readouterr().out.splitlines()
              if line.startswith(pipeline.PROGRESS_PREFIX)]
    assert phases[0] == "loading" and phases[-1] == "done"
    assert {"calibrating", "evaluating", "publishing"} <= set(phases)

    written.clear()
    again = _build(source, data["labelled"], recipe, tmp_path / "rerun",
                   store=tmp_path / "store")
    assert written == []
    assert again["summary"]["reused"] is True
    assert {k: again[k] for k in pipeline.RESULT_KEYS} == {k: result[k]
                                                           for k in pipeline.RESULT_KEYS}


def _texts(texts: list[str]) -> Any:
    import numpy as np

    arr = np.empty(len(texts), dtype=object)
    arr[:] = [t.encode() for t in texts]
    return arr


def test_prune_recover_recovers_what_pruning_alone_loses(
    source: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = {"recipe": "prune-recover", "amount": 0.9, "steps": 8, "learningRate": 3e-3}
    result = _build(source, data["plain"], recipe, tmp_path)
    report = _report(result)
    details = report["details"]
    assert details["intermediateSize"] == 8  # 64 neurons, 90% removed, rounded up to 8
    # top-1 agreement saturates on the tiny model; the distance to the source's outputs
    # shows the recovery: at least halved, and never fewer agreeing predictions
    assert report["result"]["klToSource"] < 0.5 * details["pruneOnlyKlToSource"]
    assert report["result"]["agreement"] >= details["pruneOnlyAgreement"]
    # ranked on the data by default; then each down-projection refitted on the kept
    # neurons: less of the blocks' output left unexplained, closer to the source on the
    # held-out split than the ranked pruning alone
    assert details["ranking"] == "activation"
    refit = details["reconstruction"]
    assert (refit["blocks"], refit["tokens"] > 0) == (2, True)
    assert refit["unexplainedAfter"] < 0.5 * refit["unexplainedBefore"]
    assert details["beforeRecoveryKlToSource"] < 0.5 * refit["beforeKlToSource"]
    assert refit["beforeKlToSource"] != details["pruneOnlyKlToSource"]
    # then fine-tuned, kept only if it came closer on the training examples it checks
    training = details["training"]
    assert (training["schedule"], training["dropout"]) == ("warmup-cosine", False)
    assert training["kept"] == ("recovered" if training["checkKlAfter"]
                                <= training["checkKlBefore"] else "pruned")
    assert report["result"]["parameters"] < report["source"]["parameters"]
    assert "accuracy" not in report["result"]  # unlabelled data
    backend = _served(_unpack(result, tmp_path / "unpacked"))
    assert backend.model.config.intermediate_size == 8
    # the served model's FFN layers are physically narrower (no masks, no zero rows)
    layer = backend.model.bert.encoder.layer[0]
    assert tuple(layer.intermediate.dense.weight.shape) == (8, 32)
    assert tuple(layer.output.dense.weight.shape) == (32, 8)
    assert not any(name.endswith("_mask") for name, _ in backend.model.named_buffers())
    assert set(report["result"]["latencyMsP50"]) == {"batch1", "batch8"}


def test_distill_builds_the_requested_student(
    source: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = {"recipe": "distill", "steps": 4, "learningRate": 3e-3,
              "student": {"layers": 1, "hiddenSize": 16, "intermediateSize": 32}}
    result = _build(source, data["labelled"], recipe, tmp_path)
    details = _report(result)["details"]
    assert details["initialisedFrom"] == [1]  # the teacher's last layer
    # every tensor starts from the teacher's: the narrower ones cut down to the kept units
    assert (details["tensorsFresh"], details["tensorsCopied"] > 0) == (0, True)
    assert details["tensorsNarrowed"] > 0 and details["ffnRanking"] == "weight"
    assert (details["training"]["schedule"], details["training"]["dropout"]) == (
        "warmup-cosine", False)
    assert details["training"]["hiddenWeight"] == 1.0  # the hidden-state term is on
    config = _served(_unpack(result, tmp_path / "unpacked")).model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
            config.num_attention_heads) == (1, 16, 32, 2)
    assert result["summary"]["parameterRatio"] < 0.5


@pytest.mark.parametrize(
    ("recipe", "data_name", "cause"),
    [
        ({"recipe": "distill", "student": {"layers": 1, "hiddenSize": 30, "heads": 4}},
         "labelled", "hiddenSize 30 is not divisible by heads 4"),
        ({"recipe": "distill", "student": {"layers": 3}}, "labelled",
         "student.layers 3 exceeds the source model's 2 layers"),
        ({"recipe": "distill", "student": {"layers": 1}, "hiddenWeight": -1}, "labelled",
         "recipe.hiddenWeight must be >= 0"),
        ({"recipe": "prune-recover", "amount": 0.95}, "labelled",
         "recipe.amount must be <= 0.9"),
        ({"recipe": "prune-recover", "amount": 0.5, "ranking": "random"}, "labelled",
         "recipe.ranking must be one of activation, weight, not 'random'"),
        ({"recipe": "prune-recover", "amount": 0.5, "steps": 50, "budget": {"maxSeconds": 0.01}},
         "labelled", "budget exceeded"),
        ({"recipe": "static-int8"}, "binary", "is not UTF-8 text"),
        ({"recipe": "static-int8"}, "badlabel", "line 1: label 'MAYBE' is not one of"),
        ({"recipe": "static-int8"}, "missing", "does not exist"),
        ({"recipe": "static-int8", "framework": "tensorflow"}, "labelled",
         "recipe 'static-int8' is not implemented for framework 'tensorflow'"),
        ({"recipe": "quantum"}, "labelled", "recipe.recipe must be one of"),
    ],
)
def test_bad_inputs_fail_with_the_cause(
    source: Path, data: dict[str, Path], tmp_path: Path, recipe: dict[str, Any],
    data_name: str, cause: str,
) -> None:
    extra = {"binary": b"\xff\xfe\x00\x81" * 8, "badlabel": b"MAYBE\tthe movie\n"}
    path = data.get(data_name, tmp_path / data_name)
    if data_name in extra:
        path.write_bytes(extra[data_name])
    with pytest.raises(BuildError, match=cause.replace("(", r"\(")):
        _build(source, path, recipe, tmp_path)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("MANIFEST"))


def test_cli_writes_the_cause_to_the_termination_log(
    source: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_server.cli import main

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(log))
    recipe = json.dumps({**BASE, "recipe": "distill", "student": {"layers": 1, "heads": 3}})
    code = main(["optimize", "build", "--source", str(source), "--data", str(data["plain"]),
                 "--recipe-json", recipe, "--source-sha256", SHA_SOURCE, "--data-sha256",
                 SHA_DATA, "--publish", (tmp_path / "store").as_uri(), "--work",
                 str(tmp_path / "work")])
    assert code == 2
    message = log.read_text()
    assert message.startswith("optimize build failed: recipe.student: hiddenSize 32 is not "
                              "divisible by heads 3")
    assert "\n" not in message


class _Clock:
    """A backend stand-in that records which backend ran, at which batch size."""

    def __init__(self, name: str, calls: list[tuple[str, int]]) -> None:
        self.name, self.calls = name, calls

    def predict(self, inputs: dict[str, Any]) -> None:
        self.calls.append((self.name, len(inputs["text"])))


def test_latency_interleaves_source_and_result_in_alternating_order() -> None:
    calls: list[tuple[str, int]] = []
    held = ["one", "two", "three"]

    def request(idx: list[int]) -> dict[str, Any]:
        return {"text": [held[i] for i in idx]}

    latency = interleaved_latency([_Clock("source", calls), _Clock("result", calls)], request,
                                  len(held), 4)
    assert [set(x) for x in latency] == [{"batch1", "batch8"}] * 2
    batch1 = [name for name, size in calls if size == 1]
    # one warm-up each, then turns: source first on even rounds, result first on odd ones
    assert batch1 == ["source", "result", "source", "result", "result", "source",
                      "source", "result", "result", "source"]
    assert [size for _, size in calls].count(8) == 10  # held-out texts cycled to batch 8


def test_prune_recover_over_the_statistics_bound_prunes_without_the_refit(
    source: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_server.optimize import prune

    monkeypatch.setattr(prune, "STATS_MAX_BYTES", 0)
    recipe = {"recipe": "prune-recover", "amount": 0.5, "steps": 2}
    details = _report(_build(source, data["plain"], recipe, tmp_path))["details"]
    # no statistics taken: the report says why, the ranking still used the activations
    assert details["reconstruction"] == {
        "skipped": "the FFN activation statistics would take 0.0 GiB, over the 0 GiB bound"}
    assert details["ranking"] == "activation"
    assert details["beforeRecoveryKlToSource"] != details["pruneOnlyKlToSource"]
