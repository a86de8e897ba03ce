"""The optimization pipeline: what the operator (which writes the Job and reads its outcome)
and ``model-server optimize build`` (which runs in it) agree on (docs/optimization.md).

A variant with ``build`` is produced by a Job before it is served. The artifact is
content-addressed: ``artifact_key`` of (source model sha256, the recipe as canonical JSON, data
sha256, ``CODE_VERSION``) names the directory ``<output prefix>/<key>/`` it is published to:
``model.tar.gz`` (the optimized model), ``report.json`` (the offline evaluation), and last
``MANIFEST`` (JSON: the key, the artifact's sha256 and size, the report's sha256): a key whose
MANIFEST exists is finished and never recomputed; one without it is not served. The output
prefix is an S3 prefix or a directory on a PersistentVolumeClaim (``pvc://claim/prefix/``: the
Job mounts the claim and publishes to it as ``file://``; the operator never reads the volume
and records the Job's result instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RECIPES = ("static-int8", "prune-recover", "distill")
"""``static-int8``: int8 with activation ranges calibrated on the data; ``prune-recover``:
structured pruning of FFN neurons, then training the pruned model to match the source's
outputs on the (unlabeled) data; ``distill``: a smaller student (fewer layers, narrower)
trained on the source's outputs."""
RANKINGS = ("activation", "weight")
"""How ``prune-recover`` chooses the FFN neurons it removes (the spec's
``build.pruning.ranking``, the recipe's ``ranking``); the first is the default.
``activation``: by their activations on calibration samples of the data times their outgoing
weights; ``weight``: by weights alone, as pruning at load time does."""
DEFAULT_RANKING = RANKINGS[0]
MAX_PRUNE_AMOUNT = 0.9
"""The largest ``prune-recover`` amount (the share of each FFN's neurons removed): the CRD's
maximum of ``build.pruning.amount``, the operator's spec check and the build's recipe check.
Beyond it too little of the FFN is left for recovery training to restore."""
CODE_VERSION = "6"
"""Bumped when a recipe's implementation changes what it produces (a new key, a new Job)."""

ARTIFACT_FILE = "model.tar.gz"
REPORT_FILE = "report.json"
MANIFEST_FILE = "MANIFEST"

PROGRESS_PREFIX = "msv-progress "
"""A log line of the Job's container starting with this is followed by JSON
``{"phase": str, "step": int, "total": int, "etaSeconds": float | null}``; phases:
``loading``, ``calibrating`` | ``pruning`` | ``training``, ``evaluating``, ``publishing``,
``done``. The operator reads the newest one from the pod's log (status progress)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Image data (tasks whose data are images, ``capabilities.DATA_KINDS``): files with these
suffixes (any case), PNG or JPEG, any size and colour mode (read as RGB)."""
IMAGE_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
"""Image data comes as one tar archive (optionally gzipped) with these suffixes, or as a
directory tree. Inside, paths are relative to the archive's root: ``name.png`` is an
unlabelled image, ``<label>/name.png`` one labelled with the model's label ``<label>`` (a
label name or an index); labels are all or nothing. Other files (and names starting with a
dot) are ignored."""
MAX_IMAGES = 100_000
"""An image data set holding more images is refused (the build reads them all)."""


@dataclass(frozen=True)
class Student:
    """The smaller model ``distill`` trains (the recipe's ``student``, the spec's
    ``build.student``); a size left None keeps the source's."""

    layers: int
    hidden_size: int | None = None
    intermediate_size: int | None = None
    heads: int | None = None


RESULT_KEYS = ("key", "artifactUri", "sha256", "sizeBytes", "reportUri")
"""The container's termination message on success: JSON with these keys (plus ``summary``:
the report's headline numbers)."""


def canonical(recipe: Mapping[str, Any]) -> str:
    """The recipe as canonical JSON (sorted keys, no spaces): what the key hashes."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def artifact_key(source_sha256: str, recipe: Mapping[str, Any], data_sha256: str) -> str:
    """The artifact's content address: sha256 hex of the four inputs."""
    text = "\n".join((source_sha256, canonical(recipe), data_sha256, CODE_VERSION))
    return hashlib.sha256(text.encode()).hexdigest()
