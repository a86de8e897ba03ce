"""The OCI image layout: layer tars, config/manifest/index JSON and the archive writer.

Pure file formats, no host tools: ``write_layer_tar`` turns a directory (an overlayfs upper
dir or a plain tree) into a deterministic layer tar; ``write_oci_archive`` writes one image's
OCI image-layout tar. Called by the layer cache (``cache.py``), the image builder
(``builder.py``) and, for the blob names, the containerd import (``containerd.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OPAQUE_XATTR = "trusted.overlay.opaque"
COPY_BUFFER = 4 << 20  # tarfile's default 16 KiB makes multi-GB layers CPU-bound


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what the Dockerfile's ENV/USER/... lines say)."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    ports: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class LayerBlob:
    """An uncompressed layer tar: its digest is its diff_id."""

    name: str
    path: Path
    diff_id: str
    size: int


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _HashingWriter:
    """A write-only file that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.hash, self.size = inner, hashlib.sha256(), 0

    def tell(self) -> int:
        return self.size

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self.inner.write(b)
        self.size += len(b)
        return len(b)


def walk_sorted(root: Path) -> Iterator[Path]:
    """Every entry below ``root``, parents before children, names in byte order."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name.encode()):
        p = Path(entry.path)
        yield p
        if entry.is_dir(follow_symlinks=False):
            yield from walk_sorted(p)


def _is_opaque(p: Path) -> bool:
    try:
        return os.getxattr(p, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def write_layer_tar(src: Path, dest: Path) -> tuple[str, int]:
    """Write ``src`` (an overlayfs upper dir or a plain tree) as an OCI layer tar.

    Deterministic order and numeric owners; overlayfs whiteouts (0/0 character devices) become
    ``.wh.NAME`` entries and opaque directories get ``.wh..wh..opq``. Returns (diff_id, size).
    """
    with open(dest, "wb") as raw:
        hw = _HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
            for p in walk_sorted(src):
                arc = p.relative_to(src).as_posix()
                st = p.lstat()
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    parent = Path(arc).parent.as_posix()
                    wh = tarfile.TarInfo(f".wh.{p.name}" if parent == "." else
                                         f"{parent}/.wh.{p.name}")
                    wh.mtime = int(st.st_mtime)
                    tar.addfile(wh)
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue
                info = tar.gettarinfo(str(p), arcname=arc)
                info.uname = info.gname = ""
                if info.isreg():
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if info.isdir() and _is_opaque(p):
                    opq = tarfile.TarInfo(f"{arc}/.wh..wh..opq")
                    opq.mtime = int(st.st_mtime)
                    tar.addfile(opq)
        return "sha256:" + hw.hash.hexdigest(), hw.size


def image_config_json(config: ImageConfig, diff_ids: Sequence[str],
                      history: Sequence[str]) -> bytes:
    cfg: dict[str, Any] = {"Entrypoint": list(config.entrypoint)}
    if config.cmd:
        cfg["Cmd"] = list(config.cmd)
    if config.env:
        cfg["Env"] = list(config.env)
    if config.user:
        cfg["User"] = config.user
    if config.workdir:
        cfg["WorkingDir"] = config.workdir
    if config.ports:
        cfg["ExposedPorts"] = {f"{p}/tcp": {} for p in config.ports}
    if config.labels:
        cfg["Labels"] = dict(config.labels)
    return _canonical({
        "architecture": "amd64", "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": h} for h in history],
    })


def manifest_json(config_blob: bytes, layers: Sequence[LayerBlob]) -> bytes:
    return _canonical({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": _digest(config_blob),
                   "size": len(config_blob)},
        "layers": [{"mediaType": MT_LAYER, "digest": la.diff_id, "size": la.size}
                   for la in layers],
    })


def index_json(ref: str, manifest: bytes) -> bytes:
    tag = ref.rsplit(":", 1)[1]
    return _canonical({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {ANNOTATION_IMAGE_NAME: ref, ANNOTATION_REF_NAME: tag},
        }],
    })


def write_oci_archive(dest: Path, ref: str, layers: Sequence[LayerBlob], config: ImageConfig,
                      history: Sequence[str] = ()) -> str:
    """Write an OCI image-layout tar for one image; returns the manifest digest.

    An archive whose sidecar ``DEST.digest`` already names the same manifest is left alone.
    """
    config_blob = image_config_json(config, [la.diff_id for la in layers],
                                    history or [la.name for la in layers])
    manifest = manifest_json(config_blob, layers)
    digest = _digest(manifest)
    sidecar = dest.with_name(dest.name + ".digest")
    if dest.is_file() and sidecar.is_file() and sidecar.read_text().strip() == digest:
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # concurrent builds stay apart

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
            add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            add_bytes(tar, "index.json", index_json(ref, manifest))
            for d in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            add_bytes(tar, f"blobs/sha256/{_digest(config_blob)[7:]}", config_blob)
            add_bytes(tar, f"blobs/sha256/{digest[7:]}", manifest)
            seen = set()
            for la in layers:
                if la.diff_id in seen:
                    continue
                seen.add(la.diff_id)
                info = tarfile.TarInfo(f"blobs/sha256/{la.diff_id[7:]}")
                info.size, info.mode = la.size, 0o644
                with open(la.path, "rb") as f:
                    tar.addfile(info, f)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no partial archive
        raise
    os.replace(tmp, dest)
    sidecar.write_text(digest + "\n")
    return digest
