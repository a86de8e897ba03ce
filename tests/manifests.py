"""ModelService manifests for the tests that send them to an API server or the operator's
parser (tests/integration, tests/e2e; bench/operator_failover.py through operator_harness):
the one factory, with the defaults most tests share and a keyword per spec field.

``modelservice(name, namespace, **fields)`` is ``{"apiVersion", "kind", "metadata", "spec"}``
whose spec has

* ``model``: default ``MODEL`` (an ``s3://`` URI: an init container pulls into an emptyDir,
  no PersistentVolumeClaim is needed, so kwok's pods can be scheduled and become Ready);
  ``model(**changes)`` is ``MODEL`` with fields changed or (``None``) removed;
* ``variants``: default one variant, ``baseline``;
* ``traffic``: a list as the CRD has it, or ``{variant: weight}`` (in that order);
* any other spec field as a keyword, as the CRD spells it: ``replicas``, ``rollout``,
  ``autoscaling``, ``gpu``, ``server``, ``monitoring``, ``gateway``...

A field given as ``None`` is left out (``variants=None``: the CRD's default applies). Every
call returns new dicts: a test may change its manifest and apply it again.
``manifest(name, namespace, spec)`` wraps a spec exactly as given, for tests whose data is the
spec itself (what admission must refuse).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

MS_API = "serving.modelservice.dev/v1alpha1"
KIND = "ModelService"
MODEL: dict[str, Any] = {"uri": "s3://models/sentiment", "framework": "transformers",
                         "task": "text-classification"}
BASELINE: list[dict[str, Any]] = [{"name": "baseline"}]
INT8: dict[str, Any] = {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}


def model(**changes: Any) -> dict[str, Any]:
    """``MODEL`` with ``changes``; a change to ``None`` removes that field."""
    out = {**MODEL, **changes}
    return {k: v for k, v in out.items() if v is not None}


def manifest(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelService named ``name`` in ``namespace`` with exactly ``spec`` (copied)."""
    return {"apiVersion": MS_API, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": copy.deepcopy(dict(spec))}


def spec(*, model: Mapping[str, Any] | None = MODEL,
         variants: list[Any] | None = BASELINE,
         traffic: Mapping[str, int] | list[Any] | None = None,
         **fields: Any) -> dict[str, Any]:
    """The spec ``modelservice`` wraps (see the module's docstring)."""
    if isinstance(traffic, Mapping):
        traffic = [{"variant": v, "weight": w} for v, w in traffic.items()]
    out = {"model": model, "variants": variants, "traffic": traffic, **fields}
    return copy.deepcopy({k: v for k, v in out.items() if v is not None})


def modelservice(name: str, namespace: str, **fields: Any) -> dict[str, Any]:
    """A ModelService with the shared defaults and ``fields`` (see the module's docstring)."""
    return manifest(name, namespace, spec(**fields))
