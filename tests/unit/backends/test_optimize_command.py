"""`model-server optimize` end to end through the CLI: artifact + JSON/text report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_server.cli import main

pytestmark = pytest.mark.torch


def test_structured_pruning_writes_a_smaller_artifact(
    tmp_path: Path, trained_classifier_dir: Path, capsys
) -> None:
    out = tmp_path / "pruned"
    rc = main(
        [
            "optimize",
            "--framework", "transformers",
            "--task", "text-classification",
            "--in", str(trained_classifier_dir),
            "--out", str(out),
            "--pruning-method", "structured",
            "--pruning-amount", "0.5",
            "--samples", "8",
            "--repeats", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "optimization-report.json").read_text())
    assert report["ratios"]["parameters"] < 1.0 and report["ratios"]["size"] < 1.0
    assert report["agreement"]["logits"]["argmax_agreement"] >= 0.75
    assert (out / "model.safetensors").stat().st_size < (
        trained_classifier_dir / "model.safetensors"
    ).stat().st_size
    assert "size bytes" in (out / "optimization-report.txt").read_text()
    assert "p50 ms" in capsys.readouterr().out


def test_int8_report(tmp_path: Path, trained_classifier_dir: Path) -> None:
    out = tmp_path / "int8"
    rc = main(
        [
            "optimize", "--framework", "transformers", "--in", str(trained_classifier_dir),
            "--out", str(out), "--quantization", "dynamic-int8", "--repeats", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "optimization-report.json").read_text())
    assert report["optimized"]["size_bytes"] < report["baseline"]["size_bytes"]
    assert report["agreement"]["label"]["exact_match"] >= 0.875
    assert any("dynamic-int8" in note for note in report["notes"])


@pytest.mark.parametrize(
    "extra",
    [
        [],  # nothing to do
        ["--pruning-method", "structured"],  # no amount
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, text_classifier_dir: Path, extra, caplog) -> None:
    argv = ["optimize", "--framework", "transformers", "--in", str(text_classifier_dir)]
    assert main([*argv, "--out", str(tmp_path / "o"), *extra]) == 2


def test_missing_model_exits_2(tmp_path: Path) -> None:
    argv = ["optimize", "--framework", "torchscript", "--in", str(tmp_path / "nope")]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quantization", "float16"]) == 2
