"""The activator: holds the requests sent to a Service at zero until one of its pods is ready,
and tells KEDA about them (docs/scale-to-zero.md, "The activator"; the protocol is
``msv_contract.scaletozero``).

* ``routes``   - the routes ConfigMap and a Service's ready endpoints, parsed (pure);
* ``holder``   - per route: the ready endpoints, the held requests, the bounded queue;
* ``proxy``    - one HTTP/1.1 listener per route port: hold, then forward (streaming);
* ``scaler``   - KEDA's ``externalscaler.ExternalScaler`` gRPC service (push);
* ``peers``    - replicas tell each other how many requests they hold;
* ``metrics``  - the activator's Prometheus metrics;
* ``app``      - the loops that read the cluster and open/close listeners; ``__main__`` the flags.
"""
