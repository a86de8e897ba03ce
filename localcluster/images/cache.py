"""The content-addressed layer cache: keys, lookups, building a missing layer, removal.

A layer lives in ``$MSV_CACHE/images/layers/<key>/`` (``rootfs/``, ``layer.tar``,
``layer.json``); its key hashes the parent layer's key and the layer's inputs, so an
unchanged layer is never rebuilt. Which inputs key a layer is ``steps.step_key``'s business;
``builder.py`` asks ``get_layer`` for each layer of an image and ``remove_unused`` prunes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from localcluster import paths
from localcluster.images.host import Out, mb
from localcluster.images.oci import LayerBlob, walk_sorted, write_layer_tar


@dataclass
class BuiltLayer(LayerBlob):
    key: str = ""
    rootfs: Path = Path()
    cached: bool = False
    seconds: float = 0.0


def layer_key(parent: str, kind: str, *inputs: str | bytes) -> str:
    """Hash of everything that decides a layer's content, chained to its parent's key."""
    h = hashlib.sha256(f"{kind}\0{parent}\0".encode())
    for i in inputs:
        b = i.encode() if isinstance(i, str) else i
        h.update(len(b).to_bytes(8, "big") + b)
    return h.hexdigest()[:32]


def files_digest(root: Path, rel_to: Path | None = None) -> str:
    """Hash of the names and bytes of every file under ``root`` (caches and .pyc left out)."""
    h = hashlib.sha256()
    base = rel_to or root
    for p in walk_sorted(root):
        if "__pycache__" in p.parts or p.suffix == ".pyc" or not p.is_file():
            continue
        h.update(p.relative_to(base).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def layers_dir() -> Path:
    return paths.images_dir() / "layers"


def cached_layer(name: str, key: str) -> BuiltLayer | None:
    d = layers_dir() / key
    meta = d / "layer.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    tar_path = d / "layer.tar"
    if not tar_path.is_file() or tar_path.stat().st_size != m["size"]:
        return None
    return BuiltLayer(name=name, path=tar_path, diff_id=m["diff_id"], size=m["size"], key=key,
                      rootfs=d / "rootfs", cached=True, seconds=m.get("seconds", 0.0))


def get_layer(name: str, key: str, make: Callable[[Path], None], out: Out,
              label: str) -> BuiltLayer:
    """The cached layer for ``key``, or run ``make(rootfs_dir)`` and cache what it leaves."""
    hit = cached_layer(name, key)
    if hit:
        out(f"==> {label}: layer {name} (cached)")
        return hit
    out(f"==> {label}: layer {name} (building)")
    t0 = time.monotonic()
    layers_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=layers_dir()))
    try:
        make(tmp / "rootfs")
        diff_id, size = write_layer_tar(tmp / "rootfs", tmp / "layer.tar")
        seconds = time.monotonic() - t0
        (tmp / "layer.json").write_text(json.dumps(
            {"name": name, "key": key, "diff_id": diff_id, "size": size,
             "seconds": round(seconds, 1)}, indent=1) + "\n")
        final = layers_dir() / key
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out(f"==> {label}: layer {name} built in {seconds:.0f} s ({mb(size)})")
    built = cached_layer(name, key)
    assert built is not None
    built.cached, built.seconds = False, seconds
    return built


def remove_unused(keep: Iterable[str], out: Out) -> int:
    """Remove cached layers whose key is not in ``keep``; returns the bytes freed.

    Directories of builds in progress (``.NAME-*``) are left alone.
    """
    root = layers_dir()
    if not root.is_dir():
        return 0
    kept = set(keep)
    freed = 0
    for d in root.iterdir():
        if d.name.startswith(".") or d.name in kept or not d.is_dir():
            continue
        freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(d, ignore_errors=True)
    if freed:
        out(f"==> images: removed cached layers no image uses any more ({mb(freed)})")
    return freed
