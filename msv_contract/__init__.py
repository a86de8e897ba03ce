"""The facts the operator and the model server share, each written once.

Both sides import this package; it imports nothing of the project and no third-party
package (`.importlinter` holds it to that), so the operator stays light and the server
loads no framework because of it.

- `api`: the API group, version, kinds, label and annotation keys.
- `env`: the operator -> server contract: the `MODEL_SERVER_*` variables the operator sets,
  the paths it mounts, the ports it exposes.
- `metrics`: the server's metric names and the label names the operator's PromQL and the
  metrics adapter select on.
- `capabilities`: framework x task x optimization -> the server's backend, the runtime that
  serves it, the pip extra, the devices. Spec validation, the backend registry, the server's
  settings, the optimize command, the CRD's enums (held equal by a test) and the docs'
  table all read it. `python -m msv_contract` prints that table.
"""
