"""The generic model server: one model per process over the Open Inference Protocol v2.

Start it with `model-server serve` (model_server.cli) or build the app with
`model_server.app.create_app`; docs/model-server.md describes settings, endpoints,
errors, batching, metrics and the container images. Importing this package loads no
ML framework.
"""
