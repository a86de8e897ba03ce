"""Agreement of two greedy generations: the share of identical tokens, position by position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_agreement(stable: Sequence[Any], candidate: Sequence[Any]) -> float:
    """Tokens equal at the same position / the longer sequence's length (0..1).

    Two empty continuations agree (1.0); a continuation that stops early disagrees on every
    position the other one still has.
    """
    longest = max(len(stable), len(candidate))
    if longest == 0:
        return 1.0
    same = sum(1 for a, b in zip(stable, candidate, strict=False) if a == b)
    return same / longest
