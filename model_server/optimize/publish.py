"""Publishing a built artifact: a deterministic tar.gz, its sha256, and the store.

Order (msv_contract.pipeline): ``<prefix>/<key>/model.tar.gz``, then ``report.json``, then
``MANIFEST`` last, so a MANIFEST is only ever next to a complete artifact. Stores: ``file://``
(a directory; each file written to a temporary name and renamed) and ``s3://bucket/prefix``
(boto3 with the ``AWS_*`` environment `model-server pull` honours).

The archive is byte-for-byte a function of the files: sorted members, mtime 0, owner 0,
modes 0644/0755, gzip header without a name or a time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from model_server.optimize.recipe import BuildError
from msv_contract import pipeline

CHUNK = 1 << 20


def deterministic_tar(src: Path, archive: Path) -> None:
    """`src`'s files as a gzip tar at `archive` (members relative to `src`)."""
    src = Path(src)
    with archive.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            name = path.relative_to(src).as_posix()
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif path.is_file():
                info.mode = 0o644
                info.size = path.stat().st_size
                with path.open("rb") as fh:
                    tar.addfile(info, fh)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """One key's directory in the output store: ``<prefix>/<key>/``."""

    def __init__(self, prefix: str, key: str) -> None:
        parsed = urlparse(prefix)
        self.scheme = parsed.scheme
        if self.scheme not in ("file", "s3"):
            raise BuildError(f"--publish must be a file:// or s3:// URI, not {prefix!r}")
        self.base = prefix.rstrip("/") + "/" + key + "/"
        if self.scheme == "file":
            self.root = Path(unquote(parsed.path)) / key
        else:
            if not parsed.netloc:
                raise BuildError(f"--publish {prefix!r} names no bucket")
            self.bucket = parsed.netloc
            self.prefix = "/".join(p for p in (parsed.path.strip("/"), key) if p) + "/"
            self._client: Any = None

    def uri(self, name: str) -> str:
        return self.base + name

    def _s3(self) -> Any:
        if self._client is None:
            from model_server.pull import PullError, _s3_client

            try:
                self._client = _s3_client()
            except PullError as exc:
                raise BuildError(str(exc)) from exc
        return self._client

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        if self.scheme == "file":
            path = self.root / name
            return path.read_bytes() if path.is_file() else None
        try:
            answer = self._s3().get_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise BuildError(f"cannot read {self.uri(name)}: {exc}") from exc
        return bytes(answer["Body"].read())

    def put_file(self, name: str, path: Path) -> None:
        try:
            if self.scheme == "file":
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = self.root / f".{name}.partial"
                with Path(path).open("rb") as src, tmp.open("wb") as dst:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                tmp.replace(self.root / name)
            else:
                self._s3().upload_file(str(path), self.bucket, self.prefix + name)
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(f"cannot write {self.uri(name)}: {exc}") from exc

    def put_bytes(self, name: str, data: bytes, work: Path) -> None:
        tmp = Path(work) / f"publish-{name}"
        tmp.write_bytes(data)
        self.put_file(name, tmp)


def manifest(store: Store) -> dict[str, Any] | None:
    """The key's MANIFEST, or None when the key is not finished."""
    data = store.read(pipeline.MANIFEST_FILE)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BuildError(f"{store.uri(pipeline.MANIFEST_FILE)} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BuildError(f"{store.uri(pipeline.MANIFEST_FILE)} is not a JSON object")
    return value


def publish(store: Store, key: str, model_dir: Path, report: bytes,
            work: Path) -> dict[str, Any]:
    """Write, checksum, publish: archive, report, MANIFEST last; returns the MANIFEST."""
    archive = Path(work) / pipeline.ARTIFACT_FILE
    deterministic_tar(model_dir, archive)
    digest = sha256_file(archive)
    size = archive.stat().st_size
    store.put_file(pipeline.ARTIFACT_FILE, archive)
    store.put_bytes(pipeline.REPORT_FILE, report, work)
    entry = {"key": key, "sha256": digest, "sizeBytes": size,
             "reportSha256": hashlib.sha256(report).hexdigest()}
    store.put_bytes(pipeline.MANIFEST_FILE, json.dumps(entry, sort_keys=True).encode(), work)
    return entry


def result(store: Store, entry: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The termination message on success (pipeline.RESULT_KEYS plus summary)."""
    return {
        "key": entry.get("key"),
        "artifactUri": store.uri(pipeline.ARTIFACT_FILE),
        "sha256": entry.get("sha256"),
        "sizeBytes": entry.get("sizeBytes"),
        "reportUri": store.uri(pipeline.REPORT_FILE),
        "summary": summary,
    }
