"""Fixtures for backend and optimization tests: tiny real artifacts, built once per session.

The artifacts come from tests/modelfactory.py (random-init or briefly trained models saved
the way users save them); nothing is downloaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: modelfactory

import modelfactory

# torch._dynamo before TensorFlow: the server never loads both (one model per process), a
# test session does
modelfactory.torch_before_tensorflow()


@pytest.fixture(scope="session")
def factory() -> object:
    return modelfactory


def _artifact(
    tmp_path_factory: pytest.TempPathFactory,
    framework: str,
    name: str,
    make: Callable[[Path], object],
    subdir: str | None = None,
) -> Path:
    """The model `make` writes into a fresh session directory (or a `subdir` of it that
    does not exist yet); the test is skipped when `framework` is not installed."""
    pytest.importorskip(framework)
    path = tmp_path_factory.mktemp(name)
    if subdir is not None:
        path = path / subdir
    make(path)
    return path


@pytest.fixture(scope="session")
def text_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _artifact(
        tmp_path_factory, "transformers", "text-classifier", modelfactory.make_text_classifier
    )


@pytest.fixture(scope="session")
def trained_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT classifier trained on synthetic sentiment data: its argmax means something."""

    def make(path: Path) -> None:
        accuracy = modelfactory.make_trained_text_classifier(
            path, steps=30, hidden_size=64, intermediate_size=128
        )
        assert accuracy >= 0.9, f"the synthetic task did not train (accuracy {accuracy})"

    return _artifact(tmp_path_factory, "transformers", "trained-classifier", make)


@pytest.fixture(scope="session")
def text_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _artifact(
        tmp_path_factory, "transformers", "text-generator", modelfactory.make_text_generator
    )


@pytest.fixture(scope="session")
def image_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _artifact(
        tmp_path_factory, "transformers", "image-classifier", modelfactory.make_image_classifier
    )


@pytest.fixture(scope="session")
def torchscript_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _artifact(tmp_path_factory, "torch", "torchscript", modelfactory.make_torchscript)


@pytest.fixture(scope="session")
def savedmodel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    make = partial(modelfactory.make_keras_cnn, format="savedmodel")
    return _artifact(tmp_path_factory, "tensorflow", "savedmodel", make, subdir="model")


@pytest.fixture(scope="session")
def keras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    make = partial(modelfactory.make_keras_cnn, format="keras")
    return _artifact(tmp_path_factory, "tensorflow", "keras", make)


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
