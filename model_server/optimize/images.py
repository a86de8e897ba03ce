"""Image data of the optimization pipeline: the data set's reader and the images as model
inputs (used by `model-server optimize build` for image-classification).

The data set (msv_contract.pipeline ``IMAGE_*``): one tar archive (``.tar``, ``.tar.gz``,
``.tgz``) or a directory tree of PNG/JPEG files; ``name.png`` at the root is an unlabelled
image, ``<label>/name.png`` one labelled with the model's label ``<label>`` (a label name or
an index); labels are all or nothing. Images are kept encoded, in path order, and decoded
where they are used:

- transformers models: through the model's own image processor (the one the server's
  transformers backend loads, so calibration and training see what serving sees); the
  evaluation sends the encoded bytes to the backend's ``image`` input;
- TensorFlow models (tensor inputs): decoded by TensorFlow to RGB, resized (bilinear) to the
  model's input height and width, the 0..255 pixel values mapped linearly onto the recipe's
  ``inputRange`` (default [0, 1]) as float32 NHWC.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from model_server.optimize.recipe import BuildError
from msv_contract import pipeline

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(pipeline.IMAGE_ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(pipeline.IMAGE_SUFFIXES)


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") for p in parts)


def _archive_members(archive: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name.removeprefix("./"))
                if not member.isfile() or _hidden(name.parts) or not _is_image(name.name):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                yield str(name), handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BuildError(f"data {archive.name} is not a readable tar archive of images: "
                         f"{exc}") from exc


def _tree_members(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not _hidden(rel.parts) and _is_image(path.name):
            yield rel.as_posix(), path.read_bytes()


def members(path: Path) -> list[tuple[str, bytes]]:
    """(path in the data set, encoded bytes) of every image, in path order."""
    path = Path(path)
    if path.is_file():
        if not is_archive(path):
            raise BuildError(f"data {path.name}: image data must be a tar archive "
                             f"({', '.join(pipeline.IMAGE_ARCHIVE_SUFFIXES)}) or a directory "
                             "of images")
        found = list(_archive_members(path))
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and not _hidden(p.relative_to(path).parts)]
        if len(files) == 1 and is_archive(files[0]):  # a pulled archive
            found = list(_archive_members(files[0]))
        else:
            found = list(_tree_members(path))
    else:
        raise BuildError(f"data {path} does not exist")
    if len(found) > pipeline.MAX_IMAGES:
        raise BuildError(f"data holds {len(found)} images; at most {pipeline.MAX_IMAGES}")
    return sorted(found)


def read_image_data(path: Path, label2id: dict[str, int], num_labels: int) -> Any:
    """The images (encoded) and their labels, if any: train.Examples; BuildError naming the
    image on bad input."""
    from model_server.optimize.train import Examples, label_id

    images: list[bytes] = []
    labels: list[int] = []
    labelled: bool | None = None
    for name, blob in members(path):
        parts = PurePosixPath(name).parts
        if len(parts) > 2:
            raise BuildError(f"data image {name}: expected name.png or <label>/name.png, "
                             "not a deeper path")
        if labelled is None:
            labelled = len(parts) == 2
        elif labelled != (len(parts) == 2):
            raise BuildError(f"data image {name}: mixes labelled (<label>/name.png) and "
                             "unlabelled (name.png) images")
        if not blob.startswith(_MAGIC):
            raise BuildError(f"data image {name} is not a PNG or JPEG file")
        if labelled:
            labels.append(label_id(parts[0], label2id, num_labels, f"data image {name}"))
        images.append(blob)
    if len(images) < 2:
        suffixes = ", ".join(pipeline.IMAGE_SUFFIXES)
        raise BuildError(f"data holds {len(images)} image(s) ({suffixes}); at least 2 are "
                         "needed (a training and a held-out split)")
    return Examples(images, labels if labelled else None)


def processor_inputs(processor: Any, blobs: Sequence[bytes]) -> dict[str, Any]:
    """Keyword inputs of a transformers image model: the processor's ``pixel_values``."""
    from PIL import Image, UnidentifiedImageError

    pictures = []
    for i, blob in enumerate(blobs):
        try:
            pictures.append(Image.open(io.BytesIO(blob)).convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BuildError(f"data image {i} cannot be decoded: {exc}") from exc
    return {"pixel_values": processor(images=pictures, return_tensors="pt")["pixel_values"]}


def tensor_inputs(blobs: Sequence[bytes], height: int, width: int,
                  input_range: tuple[float, float]) -> np.ndarray:
    """float32 [N, height, width, 3]: the images decoded, resized and scaled onto
    `input_range` (a TensorFlow model's input)."""
    import tensorflow as tf

    lo, hi = input_range
    out = np.empty((len(blobs), height, width, 3), dtype=np.float32)
    for i, blob in enumerate(blobs):
        try:
            image = tf.io.decode_image(blob, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            raise BuildError(f"data image {i} cannot be decoded: {exc}") from exc
        pixels = tf.cast(image, tf.float32)
        if tuple(image.shape[:2]) != (height, width):
            pixels = tf.image.resize(pixels, (height, width), method="bilinear")
        out[i] = pixels.numpy() * ((hi - lo) / 255.0) + lo
    return out
