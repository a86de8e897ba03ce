"""The local cluster's Gateway API implementation: nginx (Debian's) as the data plane, driven
by the project's own controller (docs/gateway.md).

- ``render``: PURE. GatewayClass/Gateway/HTTPRoute/Service/EndpointSlice/Namespace and
  XBackendTrafficPolicy objects (plain dicts, as the API returns them) -> the nginx.conf text
  and the status each GatewayClass, Gateway, HTTPRoute parent and policy ancestor should
  carry;
- ``budget.lua``: the retry budget the routing tier's nginx runs (Debian's lua module) on
  every try of a request, per backend Service; shipped as package data;
- ``nginx``: the nginx master as a child process: write a config atomically, ``nginx -t``,
  reload, confirm the workers serve the new config;
- ``controller``: lists and watches the objects (``kubernetes`` client), renders on change
  (debounced), applies the config through ``nginx``, writes status, serves ``/healthz`` and
  ``/metrics``; ``python -m localcluster.gateway`` (the ``gateway`` image) runs it;
- ``install``: the manifests (``manifests``, pure), ``install`` and ``health``, called by
  ``localcluster.cluster`` like ``localcluster.monitoring``.

The image carries the ``localcluster`` package, but ``render``, ``nginx``, ``controller`` and
``__main__`` import nothing of it outside this package (``.importlinter``): in the image only
``kubernetes`` and ``prometheus_client`` are installed beside them.
"""
