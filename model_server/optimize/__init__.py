"""Model optimizations applied at load time and by the offline `model-server optimize` command.

`device` picks where a model runs, `quantize` holds int8 / half-precision conversions,
`prune` holds unstructured (masking) and structured (layer-shrinking) pruning, `stats`
measures parameters, bytes and sparsity honestly after optimization, `report` and
`command` implement the offline command. Frameworks are imported inside functions only.
Failures raise model_server.errors.ModelLoadError. The backends import these modules, so
none of them imports model_server.backends, except `command`, which drives the backends
(a contract in .importlinter).
"""
