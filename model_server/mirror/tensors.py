"""Agreement of two raw-tensor answers: the share of elements within a tolerance.

An element agrees when `|candidate - stable| <= ATOL + RTOL * |stable|` (numpy.isclose with
the stable answer as reference; NaN agrees with NaN). Non-numeric outputs (BYTES) agree when
equal. An output missing from the candidate, or of another shape, disagrees on all its
elements.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

RTOL = 1e-2
"""Relative tolerance: 1% of the stable value (fp16/bf16/int8 variants differ by about that)."""
ATOL = 1e-3
"""Absolute tolerance, for elements near zero."""


def tensor_agreement(
    stable: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    rtol: float = RTOL,
    atol: float = ATOL,
) -> float:
    """Elements of every stable output the candidate matches within tolerance / all (0..1)."""
    total = 0
    agree = 0
    for name, mine in stable.items():
        mine = np.asarray(mine)
        total += mine.size
        theirs = candidate.get(name)
        if theirs is None:
            continue
        theirs = np.asarray(theirs)
        if theirs.shape != mine.shape:
            continue
        if mine.dtype.kind in "fiub" and theirs.dtype.kind in "fiub":
            close = np.isclose(
                theirs.astype(np.float64), mine.astype(np.float64), rtol=rtol, atol=atol,
                equal_nan=True,
            )  # fmt: skip
        else:
            close = mine == theirs
        agree += int(np.count_nonzero(close))
    return agree / total if total else 1.0
