"""Scale to zero: what the operator, the activator (the request holder) and KEDA agree on
(docs/scale-to-zero.md).

A variant (or a whole ModelService) with ``minReplicas: 0`` is scaled by a KEDA ScaledObject
the operator writes; while a Service that routes to it has no ready pod, the operator adds an
EndpointSlice to that Service pointing at the activator pods, on a port the operator allocated
for that Service and recorded in the routes ConfigMap; the activator holds the requests it
gets there (bounded queue, timeout, 503 + Retry-After when full), reports them to KEDA through
KEDA's external scaler gRPC interface (push), and forwards each held request to a ready pod
of the Service (from the Service's own EndpointSlices) once one exists; then the operator
removes the activator's EndpointSlice.
"""

from __future__ import annotations

from dataclasses import dataclass

from msv_contract.api import GROUP

# -- the activator's routes: written by the operator, read by the activator -----------------
ROUTES_CONFIGMAP = "msv-activator-routes"
"""ConfigMap in the operator's namespace (the activator's namespace too)."""
ROUTES_KEY = "routes.json"
"""``{"routes": [{"port": int, "namespace": str, "service": str, "servicePort": int,
"modelservice": str, "variant": str | null}]}``: the activator listens on ``port`` and
forwards to the ready endpoints of Service ``namespace/service`` on the target port of its
port ``servicePort``. ``variant`` null: the stable Service of the ModelService."""
PORT_RANGE = (20000, 20999)
"""Activator listener ports the operator allocates (one per Service port held)."""


@dataclass(frozen=True)
class Route:
    """One entry of ``ROUTES_KEY`` (``servicePort`` is ``service_port`` here)."""

    port: int
    namespace: str
    service: str
    service_port: int
    modelservice: str
    variant: str | None

    def key(self) -> tuple[str, str, int]:
        """(namespace, service, service port): the Service port the route holds."""
        return self.namespace, self.service, self.service_port

    @property
    def target(self) -> tuple[str, str, str]:
        """(namespace, modelservice, variant or ""): what KEDA's trigger metadata names."""
        return (self.namespace, self.modelservice, self.variant or "")


# -- the EndpointSlice that sends a Service's traffic to the activator ------------------------
SLICE_SUFFIX = "-activator"
"""Its name: ``<service>-activator`` (in the Service's namespace)."""
SLICE_MANAGED_BY = f"operator.{GROUP}"
"""Its ``endpointslice.kubernetes.io/managed-by`` label (the controller's slices carry
``endpointslice-controller.k8s.io``; kube-proxy routes to both)."""

# -- KEDA -------------------------------------------------------------------------------------
KEDA_API = "keda.sh/v1alpha1"
SCALED_OBJECT = "ScaledObject"
SCALER_PORT = 9090
"""The activator's KEDA external scaler (gRPC, ``externalscaler.ExternalScaler``)."""
SCALER_METADATA = ("namespace", "modelservice", "variant")
"""The ``external-push`` trigger's metadata keys the activator reads (variant: the
Deployment's variant; its count adds the requests held on the stable Service, whose routes
have no variant)."""

# -- held requests ----------------------------------------------------------------------------
HELD_HEADER = "x-msv-held-ms"
"""On a response to a held request: milliseconds it was held."""
DEFAULT_QUEUE = 100
"""Requests held per Service port at most; beyond: 503 with Retry-After."""
DEFAULT_HOLD_SECONDS = 120.0
"""A held request still without a ready pod after this gets 503 with Retry-After."""

# -- metrics of the activator -----------------------------------------------------------------
PREFIX = "msv_activator_"
HELD = f"{PREFIX}held_requests"
"""Gauge by namespace, modelservice, variant: requests being held now."""
REQUESTS = f"{PREFIX}requests"
"""Counter by namespace, modelservice, result (forwarded, timeout, full, error)."""
HOLD_SECONDS = f"{PREFIX}hold_seconds"
"""Histogram by namespace, modelservice: how long forwarded requests were held."""

# -- status -----------------------------------------------------------------------------------
REASON_SCALED_TO_ZERO = "ScaledToZero"
"""``Ready=True`` reason of a ModelService whose serving variants are all at zero (idle, not
failed: the first request brings a pod back)."""
REASON_SCALING_BLIND = "ScaleToZeroUnavailable"
"""``AutoscalingBlind=True`` reason when KEDA or the activator cannot act: the ModelService
keeps its current size (nothing is scaled to zero)."""
