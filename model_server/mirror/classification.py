"""Agreement of two classifiers' answers: the same top label (or argmax), row by row."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LABEL_OUTPUT = "label"
LOGITS_OUTPUTS = ("logits", "scores", "probabilities", "output", "output__0")


def _top(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """One top class per row: the label output, else the argmax of the class scores."""
    label = outputs.get(LABEL_OUTPUT)
    if label is not None:
        return np.asarray(label).reshape(len(label), -1)[:, 0] if label.ndim else None
    candidates = [outputs[n] for n in LOGITS_OUTPUTS if n in outputs]
    candidates += [a for n, a in outputs.items() if n not in LOGITS_OUTPUTS]
    for scores in candidates:
        scores = np.asarray(scores)
        if scores.dtype.kind in "fiu" and scores.ndim >= 2:
            return scores.reshape(scores.shape[0], -1).argmax(axis=1)  # type: ignore[no-any-return]
    return None


def classification_agreement(
    stable: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> list[float]:
    """1.0 or 0.0 per row: does the candidate pick the stable answer's top label/argmax?

    Rows are compared in order; a candidate answer without a comparable top class, or with
    another number of rows, disagrees on every row.
    """
    mine = _top(stable)
    if mine is None:
        raise ValueError("the stable answer has no label output and no class scores")
    theirs = _top(candidate)
    if theirs is None or theirs.shape != mine.shape:
        return [0.0] * len(mine)
    return [1.0 if a == b else 0.0 for a, b in zip(mine.tolist(), theirs.tolist(), strict=True)]
