"""Fixtures for backend and optimization tests: tiny real artifacts, built once per session.

The artifacts come from tests/modelfactory.py (random-init or briefly trained models saved
the way users save them); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: modelfactory

import modelfactory

# TensorFlow and torch._dynamo (imported by transformers' models) both register LLVM
# command-line options; whichever comes second aborts the process unless torch's comes
# first. The server never loads both (one model per process), a test session does.
with contextlib.suppress(ImportError):
    import torch._dynamo  # noqa: F401


@pytest.fixture(scope="session")
def factory() -> object:
    return modelfactory


@pytest.fixture(scope="session")
def text_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("text-classifier")
    modelfactory.make_text_classifier(path)
    return path


@pytest.fixture(scope="session")
def trained_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT classifier trained on synthetic sentiment data: its argmax means something."""
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("trained-classifier")
    accuracy = modelfactory.make_trained_text_classifier(
        path, steps=30, hidden_size=64, intermediate_size=128
    )
    assert accuracy >= 0.9, f"the synthetic task did not train (accuracy {accuracy})"
    return path


@pytest.fixture(scope="session")
def text_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("text-generator")
    modelfactory.make_text_generator(path)
    return path


@pytest.fixture(scope="session")
def image_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("image-classifier")
    modelfactory.make_image_classifier(path)
    return path


@pytest.fixture(scope="session")
def torchscript_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("torchscript")
    modelfactory.make_torchscript(path)
    return path


@pytest.fixture(scope="session")
def savedmodel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    path = tmp_path_factory.mktemp("savedmodel") / "model"
    modelfactory.make_keras_cnn(path, format="savedmodel")
    return path


@pytest.fixture(scope="session")
def keras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    path = tmp_path_factory.mktemp("keras")
    modelfactory.make_keras_cnn(path, format="keras")
    return path


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
