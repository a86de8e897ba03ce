"""Settings come from MODEL_SERVER_* env vars; `model-server serve` flags override them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from model_server.cli import build_parser, main, settings_from_args
from model_server.settings import Settings, detect_framework


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SERVER_MODEL_NAME", "sentiment")
    monkeypatch.setenv("MODEL_SERVER_VARIANT", "int8")
    monkeypatch.setenv("MODEL_SERVER_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MODEL_SERVER_QUANTIZATION", "dynamic-int8")
    monkeypatch.setenv("MODEL_SERVER_TRUST_REMOTE_CODE", "false")
    args = build_parser().parse_args(
        ["serve", "--max-batch-size", "4", "--port", "9000", "--trust-remote-code"]
    )
    s = settings_from_args(args)
    assert s.model_name == "sentiment"
    assert s.variant == "int8"
    assert s.quantization == "dynamic-int8"
    assert s.max_batch_size == 4
    assert s.port == 9000
    assert s.trust_remote_code is True
    opts = s.load_options()
    assert opts.quantization == "dynamic-int8"
    assert opts.trust_remote_code is True


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.trust_remote_code is False
    assert s.port == 8080
    assert s.max_request_bytes > 0


def test_invalid_settings_are_rejected_with_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("MODEL_SERVER_QUANTIZATION", "int3")
    with pytest.raises(ValidationError, match="quantization"):
        Settings()
    monkeypatch.delenv("MODEL_SERVER_QUANTIZATION")
    assert main(["serve", "--pruning-amount", "1.5"]) == 2


def test_detect_framework(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text("{}")
    assert detect_framework(tmp_path / "t") == "transformers"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "model.pt").write_bytes(b"")
    assert detect_framework(tmp_path / "s") == "torchscript"
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "m.keras").write_bytes(b"")
    assert detect_framework(tmp_path / "k") == "tensorflow"
    with pytest.raises(ValueError, match="MODEL_SERVER_FRAMEWORK"):
        detect_framework(tmp_path)
