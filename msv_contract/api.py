"""The ModelService API: group, version, kinds, and every label and annotation key.

Everything the operator writes on objects (labels, annotations, finalizer) and everything
the server reads from its pod lives under `GROUP`.
"""

from __future__ import annotations

GROUP = "serving.modelservice.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelService"
PLURAL = "modelservices"
SINGULAR = "modelservice"
SHORT_NAME = "msv"
CRD_NAME = f"{PLURAL}.{GROUP}"

# Labels the operator puts on what it creates.
LABEL_MODELSERVICE = f"{GROUP}/modelservice"
"""The owning ModelService's name: on every object the operator creates and on its pods."""
LABEL_VARIANT = f"{GROUP}/variant"
LABEL_BUILD = f"{GROUP}/build"
"""On an optimization Job and its pod: the variant it builds (never ``LABEL_VARIANT``: the
Job's pod is no server of the variant)."""
LABEL_BUILD_KEY = f"{GROUP}/build-key"
"""On an optimization Job and its pod: the artifact key (its first 63 hex digits)."""
ANNOTATION_BUILD_GENERATION = f"{GROUP}/generation"
"""On an optimization Job: the ModelService generation it was made for."""
LABEL_PREWARM = f"{GROUP}/prewarm"
"""On a model cache pre-warming Job and its pod: the artifact it warms (``prewarm``'s short
hash of its URI and sha256)."""
ANNOTATION_PREWARM_NODE = f"{GROUP}/prewarm-node"
"""On a model cache pre-warming Job: the node whose cache it fills."""
"""The variant's name: on per-variant objects and pods."""
LABEL_SERVING = f"{GROUP}/serving"
"""``"true"`` on pods the stable Service sends traffic to (the effective split)."""
MANAGED_BY = "modelservice-operator"
"""``app.kubernetes.io/managed-by`` and the server-side-apply field manager."""

# Annotations.
ANNOTATION_MIRROR = f"{GROUP}/mirror"
"""On a stable variant's running pods during a rollout: where to mirror (JSON url, percent,
variant); the server reads it through the downward API (docs/model-server.md, Mirroring)."""
ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"
"""On every object the operator applies: the hash of what it applied (drift detection)."""
ANNOTATION_PLACEMENT_INPUTS = f"{GROUP}/placement-inputs"
"""On a GPU variant's Deployment: the hash of the inputs its placement was chosen for (its
artifact, optimization, spec.gpu, batching and task); while it is unchanged the placement is
kept (docs/modelservice-api.md, "Placement")."""
ANNOTATION_ROLLOUT_PAUSED = f"{GROUP}/rollout-paused"
"""On a ModelService: ``"true"`` holds the rollout at its step (``kubectl msv pause``)."""
ANNOTATION_ROLLOUT_ACTION = f"{GROUP}/rollout-action"
"""On a ModelService: ``<verb>/<RFC 3339 time>``, a one-shot verb (``kubectl msv promote``)."""
FINALIZER = f"{GROUP}/finalizer"
"""kopf's finalizer key."""
