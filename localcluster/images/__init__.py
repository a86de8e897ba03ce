"""Builds the project's container images locally (no Docker, no registry) and imports them.

Ten images, each an OCI archive under ``paths.images_dir()``:

- ``model-server-<runtime>``, one per runtime of the capability table
  (``msv_contract.capabilities.RUNTIMES``): ``model-server-torch`` (transformers, TorchScript;
  its CUDA-carrying wheels make it the GPU image too) and ``model-server-tensorflow``
  (SavedModel, ``.keras``, TFLite): debian + venv + the server's own deps (extras
  ``server,s3``; shared by both) + the runtime's extra + model_server, neither carrying the
  other framework;
- ``operator``: debian + venv + operator deps (extra ``operator``) + msv_operator;
- ``gateway``: the operator's first three layers + Debian's nginx (an ``apt`` step) + the
  ``localcluster`` package, running ``python -m localcluster.gateway`` (docs/gateway.md);
- ``model-store``: debian + venv + ``moto[server]`` (``python3 -m http.server`` needs no layer);
- ``pause``: one static binary built from ``localcluster/pause/pause.c``;
- ``prometheus``, ``prometheus-operator`` (also the config reloader: the operator names its
  command), ``metrics-server``, ``prometheus-adapter``: a tiny ``static`` layer
  (``/etc/passwd``, ``/etc/group``, ``/tmp``) plus the static Go binaries
  ``python -m localcluster build`` made, in ``/bin``.

The recipes (``recipes.py``) are the one source of what goes in: the Dockerfiles of the
model-server and operator images are generated from them (``dockerfile.py``). The ``debian``
layer is ``mmdebstrap`` (bookworm, minbase, python3, python3-venv, ca-certificates, user
10001). Every later layer runs one script in a chroot of an overlayfs mount (lower = the
layers below, upper = a fresh directory), so the upper directory is exactly what the step
added; pip runs inside with the machine's pip cache bind-mounted. Each layer is cached under
``layers/<key>/`` where the key hashes its parent's key and its inputs (Debian release and
package list; constraints and requirements; the package's source files), so an unchanged
layer is never rebuilt, a layer two images share is made once, and a code change rebuilds
only the top layer. ``import_images`` imports archives with ``ctr images import`` unless
containerd already has the same manifest digest, and sends only the blobs containerd does
not have yet.

The modules, top to bottom (``.importlinter`` keeps the order):

- ``containerd``: ``load`` (build, then import), ``import_images``, thin archives;
- ``builder``: ``build``, ``build_image``, ``prune_layers``, ``current_layer_keys``;
  ``dockerfile``: ``render``, ``write`` (the generated Dockerfiles);
- ``steps``: per step kind, its cache key and how its layer is made;
- ``chroot``: ``run_step``, a script in an overlay chroot; ``cache``: the layer cache;
- ``recipes``: the references and what each image holds;
- ``oci``: layer tars and the OCI archive; ``host``: ``ImageError`` and host commands.

This package exposes the entry points the CLI, the cluster and the manifests use.
"""

from __future__ import annotations

from localcluster.images.builder import build
from localcluster.images.containerd import load
from localcluster.images.host import ImageError
from localcluster.images.recipes import NAMES, REFS, image_ref

__all__ = ["NAMES", "REFS", "ImageError", "build", "image_ref", "load"]
