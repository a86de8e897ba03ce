"""The node-local model cache agent: one per node (a DaemonSet of the operator's image), it
keeps model artifacts on the node's disk, content-addressed by SHA-256, and serves them to the
pull init containers of the model pods on its node (docs/model-cache.md).

- `store`: the cache on disk: entries, single-flight fills, LRU eviction under a byte cap
  that never evicts a pinned entry, integrity checked on reuse.
- `sources`: reading an artifact from its store (http(s), S3 signed with the caller's
  credentials, files under configured roots): a HEAD that authorises and names the version,
  then the bytes.
- `server`: the HTTP front end (``msv_contract.modelcache``'s protocol) and its metrics.
- ``python -m msv_operator.cache_agent``: the command line.

Stdlib plus what the operator image already has (prometheus-client); S3 signing is
``artifacts``' own.
"""
