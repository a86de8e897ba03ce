"""PURE: Kubernetes resource quantities (``500m``, ``1Gi``, ``2``) as numbers.

Called by ``apply`` (a live ``1024Mi`` holds a desired ``1Gi``) and ``measure`` (the CPU and
memory of metrics.k8s.io's PodMetrics).
"""

from __future__ import annotations

import re
from typing import Any

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]{0,2})$")
_SUFFIX = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3,
           "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse(value: Any) -> float | None:
    """The number a quantity (string or number) stands for; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _QUANTITY.match(value.strip())
        if m and m.group(2) in _SUFFIX:
            try:
                return float(m.group(1)) * _SUFFIX[m.group(2)]
            except ValueError:
                return None
    return None
