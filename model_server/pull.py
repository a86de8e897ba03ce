"""`model-server pull URI DEST`: fetch a model into a local directory, atomically and checked.

Sources: `file://` (a file or a directory), `http(s)://` (one file, streamed with httpx),
`s3://bucket/key` (one object) or `s3://bucket/prefix/` (every object below the prefix;
boto3, honouring `AWS_ENDPOINT_URL` and the usual `AWS_*` credentials). A single
downloaded file that is a `.tar`, `.tar.gz`/`.tgz` or `.zip` archive is unpacked (members
escaping the directory are refused); any other file keeps its name inside DEST.

Atomicity: everything lands in a temporary directory on the same filesystem first and is
verified (SHA-256 of the downloaded file when `--sha256` is given) before it is renamed to
DEST. When DEST already exists as an empty directory (a volume mount point, which cannot be
replaced), the temporary directory is created inside it and its entries are moved in at
the end; a marker file `.model-pull.json` is written last, so a re-run of the same pull is a
no-op (the model is already there) and an interrupted one is detected. On any error nothing
is left at DEST.

With ``cache`` (``--cache URL``: the node's model cache agent, docs/model-cache.md) the one
file is asked of the agent first (``msv_contract.modelcache``: the URI, the pinned digest and
the ``AWS_*`` credentials in request headers); an agent that is unreachable, refuses the
artifact (a directory, a prefix) or sends bytes that do not match the digest it announces is
logged and the pull goes to the store directly. Archives are unpacked and ``--sha256`` is
checked the same either way.

The marker also says what the last pull into DEST took (`read_marker`, `Pulled`): bytes
fetched from the store, seconds, whether nothing was fetched from the store (a cache hit: the
node's cache, or DEST already held the model), where the bytes came from (``source``:
cache-hit, cache-miss, bypassed, direct), the bytes received from the agent and, when the
cache could not be used, why. `model-server pull` puts the same report in its termination
message, where the operator reads it (msv_contract.env.PULL_*); the server reads the marker at
start (model_server.startup).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from msv_contract import env as contract
from msv_contract import modelcache as mc

log = logging.getLogger(__name__)

MARKER = ".model-pull.json"
CHUNK = 1 << 20
_ARCHIVES = contract.ARCHIVE_SUFFIXES


_IDENTITY = ("uri", "sha256")
"""The marker keys that say which model DEST holds (the rest reports the last pull)."""
FINISHED_AT = "finishedAt"
"""Marker key: when the last pull into DEST finished (seconds since the epoch)."""


class PullError(Exception):
    """The pull failed; the message says why. DEST is left untouched (or absent)."""


@dataclass(frozen=True)
class Pulled:
    """What one pull did: where the model is, the bytes fetched, how long it took, and
    whether DEST already held the model (a cache hit: nothing fetched)."""

    path: Path
    bytes: int
    seconds: float
    cache_hit: bool
    """Nothing came from the store: the node's cache had it, or DEST already held it."""
    finished_at: float
    """Seconds since the epoch."""
    source: str = mc.DIRECT
    """``msv_contract.modelcache.SOURCES``: cache-hit, cache-miss, bypassed, direct."""
    cache_bytes: int = 0
    """Bytes received from the node's cache agent."""
    cache_bypass: str | None = None
    """Why the node's cache was not used (None: it was, or none is configured)."""

    def report(self) -> dict[str, Any]:
        """The report in the termination message and the marker (msv_contract.env.PULL_*)."""
        out: dict[str, Any] = {
            contract.PULL_BYTES: self.bytes, contract.PULL_SECONDS: round(self.seconds, 3),
            contract.PULL_CACHE_HIT: self.cache_hit, contract.PULL_SOURCE: self.source,
            contract.PULL_CACHE_BYTES: self.cache_bytes}
        if self.cache_bypass:
            out[contract.PULL_CACHE_BYPASS] = self.cache_bypass
        return out


def read_marker(dest: str | Path) -> dict[str, Any] | None:
    """The marker of a pulled directory (None: none, or unreadable)."""
    try:
        data = json.loads((Path(dest) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Write the marker atomically (a reader sees the old one or the new one)."""
    tmp = directory / f".pull-marker-{os.getpid()}"
    tmp.write_text(json.dumps(marker))
    tmp.rename(directory / MARKER)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


class _Progress:
    """Logs bytes received every couple of seconds and at the end."""

    def __init__(self, what: str, total: int | None, interval_s: float = 2.0) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last = self.started

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._log("Downloading")

    def finish(self) -> None:
        self._log("Downloaded")

    def _log(self, verb: str) -> None:
        mib = self.done / (1 << 20)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        extra = {"uri": self.what, "bytes": self.done, "total_bytes": self.total}
        if self.total:
            pct = 100.0 * self.done / self.total
            log.info(
                "%s %s: %.1f of %.1f MiB (%.0f%%, %.1f MiB/s)",
                verb, self.what, mib, self.total / (1 << 20), pct, mib / elapsed, extra=extra,
            )  # fmt: skip
        else:
            log.info(
                "%s %s: %.1f MiB (%.1f MiB/s)", verb, self.what, mib, mib / elapsed, extra=extra
            )


def _write_stream(chunks: Iterator[bytes], target: Path, progress: _Progress) -> str:
    """Write chunks to `target`; return the SHA-256 hex digest of what was written."""
    digest = hashlib.sha256()
    with target.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            digest.update(chunk)
            progress.add(len(chunk))
    progress.finish()
    return digest.hexdigest()


def _file_name(path: str, default: str = "model") -> str:
    name = Path(unquote(path)).name
    return name if name and name not in (".", "..") else default


# sources: each fills `staging` and returns the sha256 of the single file it fetched (or None)
def _fetch_file(uri: str, staging: Path) -> tuple[Path | None, str | None]:
    parsed = urlparse(uri)
    src = (
        Path(unquote(parsed.netloc + parsed.path)) if parsed.netloc else Path(unquote(parsed.path))
    )
    if not src.exists():
        raise PullError(f"{uri}: no such file or directory")
    if src.is_dir():
        progress = _Progress(uri, None)
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            dest = staging / rel
            if path.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif path.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                progress.add(path.stat().st_size)
        progress.finish()
        return None, None
    target = staging / src.name
    progress = _Progress(uri, src.stat().st_size)

    def chunks() -> Iterator[bytes]:
        with src.open("rb") as fh:
            while block := fh.read(CHUNK):
                yield block

    return target, _write_stream(chunks(), target, progress)


def _fetch_http(uri: str, staging: Path) -> tuple[Path | None, str | None]:
    import httpx

    target = staging / _file_name(urlparse(uri).path)
    try:
        with httpx.stream("GET", uri, follow_redirects=True, timeout=60.0) as response:
            if response.status_code != 200:
                raise PullError(f"{uri}: HTTP {response.status_code}")
            length = response.headers.get("content-length")
            progress = _Progress(uri, int(length) if length and length.isdigit() else None)
            digest = _write_stream(response.iter_bytes(CHUNK), target, progress)
            if length and length.isdigit() and progress.done != int(length):
                raise PullError(f"{uri}: got {progress.done} of {length} bytes")
    except httpx.HTTPError as exc:
        raise PullError(f"{uri}: {type(exc).__name__}: {exc}") from exc
    return target, digest


def _s3_client() -> object:
    try:
        import boto3
    except ImportError as exc:
        raise PullError("s3:// needs boto3 (pip install modelservice[s3])") from exc
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _fetch_s3(uri: str, staging: Path) -> tuple[Path | None, str | None]:
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise PullError(f"{uri}: no bucket in the URI (expected s3://bucket/key)")
    client: object = _s3_client()
    s3: object = client

    def download(obj_key: str, target: Path, size: int | None) -> str:
        body = s3.get_object(Bucket=bucket, Key=obj_key)["Body"]  # type: ignore[attr-defined]
        progress = _Progress(f"s3://{bucket}/{obj_key}", size)
        return _write_stream(body.iter_chunks(CHUNK), target, progress)

    try:
        if key and not key.endswith("/"):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in (
                    "404",
                    "NoSuchKey",
                    "NotFound",
                ):
                    raise
                head = None
            if head is not None:
                target = staging / _file_name(key)
                return target, download(key, target, int(head.get("ContentLength", 0)) or None)
            key += "/"
        paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        found = 0
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(key) :]
                if not rel or rel.endswith("/"):
                    continue
                dest = (staging / rel).resolve()
                if not dest.is_relative_to(staging.resolve()):
                    raise PullError(f"{uri}: object key {obj['Key']!r} escapes the destination")
                dest.parent.mkdir(parents=True, exist_ok=True)
                download(obj["Key"], dest, int(obj.get("Size", 0)) or None)
                found += 1
        if not found:
            raise PullError(f"{uri}: no objects found")
    except (ClientError, BotoCoreError) as exc:
        raise PullError(f"{uri}: {exc}") from exc
    return None, None


class _CacheUnavailable(Exception):
    """The agent cannot give the artifact; the pull fetches it directly."""


CACHE_CONNECT_TIMEOUT_S = 5.0
CACHE_READ_TIMEOUT_S = 3600.0
"""The agent answers a miss once it has the whole artifact: a long wait is not a failure (its
own reads of the store time out when the store stalls)."""


def _fetch_cache(cache: str, uri: str, sha256: str | None, staging: Path
                 ) -> tuple[Path, str, dict[str, object]]:
    """The artifact as one file from the agent at ``cache``; raises _CacheUnavailable."""
    import httpx

    headers = {mc.credential_header(v): os.environ[v] for v in mc.CREDENTIAL_ENV
               if os.environ.get(v)}
    params = {"uri": uri, **({"sha256": sha256} if sha256 else {})}
    target = staging / _file_name(urlparse(uri).path)
    timeout = httpx.Timeout(CACHE_READ_TIMEOUT_S, connect=CACHE_CONNECT_TIMEOUT_S)
    url = cache.rstrip("/") + mc.ARTIFACT_PATH
    try:
        with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as answer:
            if answer.status_code != 200:
                answer.read()
                raise _CacheUnavailable(
                    f"the agent answered HTTP {answer.status_code}: {answer.text.strip()[:300]}")
            length = answer.headers.get("content-length")
            progress = _Progress(uri, int(length) if length and length.isdigit() else None)
            digest = _write_stream(answer.iter_bytes(CHUNK), target, progress)
            if length and length.isdigit() and progress.done != int(length):
                raise _CacheUnavailable(f"the agent sent {progress.done} of {length} bytes")
            announced = answer.headers.get(mc.SHA256_HEADER)
            if announced and announced != digest:
                raise _CacheUnavailable(f"the agent's bytes have sha256 {digest}, not the "
                                        f"{announced} it announced")
            source = answer.headers.get(mc.SOURCE_HEADER) or mc.MISS
            store_bytes = answer.headers.get(mc.STORE_BYTES_HEADER)
            record: dict[str, object] = {
                "source": source if source in mc.SOURCES else mc.MISS,
                "storeBytes": int(store_bytes) if store_bytes and store_bytes.isdigit()
                else progress.done,
                "cacheBytes": progress.done,
            }
            if answer.headers.get(mc.BYPASS_HEADER):
                record["cacheBypass"] = answer.headers[mc.BYPASS_HEADER]
    except httpx.HTTPError as exc:
        raise _CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise PullError(f"{uri}: {exc}") from exc
    log.info("Got %s from the model cache (%s)", uri, record["source"],
             extra={"uri": uri, **record})
    return target, digest, record


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def checked_tar_members(tf: tarfile.TarFile, root: Path) -> list[tarfile.TarInfo]:
    """The members of ``tf`` if all are plain files, directories or links that stay inside
    ``root`` (what tarfile's "data" filter allows); raises PullError naming the first that is
    not. For interpreters whose tarfile has no extraction filters."""
    members = tf.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise PullError(f"archive member {m.name!r} is not a regular file or directory")
        target = (root / m.name).resolve()
        if m.name.startswith("/") or not target.is_relative_to(root):
            raise PullError(f"archive member {m.name!r} escapes the destination")
        if m.issym() or m.islnk():
            base = target.parent if m.issym() else root
            if m.linkname.startswith("/") or not (base / m.linkname).resolve().is_relative_to(
                    root):
                raise PullError(f"archive link {m.name!r} points outside the destination")
        m.mode &= 0o755  # no setuid/setgid/sticky bits, as the data filter does
    return members


def _unpack(archive: Path, staging: Path) -> None:
    """Unpack `archive` into `staging` (refusing members that escape it), then delete it."""
    root = staging.resolve()
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise PullError(f"archive member {member!r} escapes the destination")
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                    tf.extractall(staging, filter="data")
                else:  # e.g. Debian bookworm's 3.11.2, the local images' interpreter
                    tf.extractall(staging, members=checked_tar_members(tf, root))
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise PullError(f"cannot unpack {archive.name}: {exc}") from exc
    archive.unlink()


def pull(uri: str, dest: str | Path, *, sha256: str | None = None, force: bool = False,
         cache: str | None = None) -> Path:
    """Fetch `uri` into directory `dest` atomically (through the model cache agent at
    `cache` when given); return `dest`. Raises PullError."""
    return pull_report(uri, dest, sha256=sha256, force=force, cache=cache).path


def pull_report(uri: str, dest: str | Path, *, sha256: str | None = None,
                force: bool = False, cache: str | None = None) -> Pulled:
    """`pull`, saying what it did (also written to the marker). Raises PullError."""
    started = time.monotonic()
    dest = Path(dest)
    scheme = urlparse(uri).scheme
    fetchers = {"file": _fetch_file, "http": _fetch_http, "https": _fetch_http, "s3": _fetch_s3}
    fetch = fetchers.get(scheme)
    if fetch is None:
        raise PullError(
            f"unsupported URI scheme {scheme!r} in {uri}; use file://, http(s):// or s3://"
        )
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise PullError("--sha256 must be 64 hexadecimal characters")
    marker: dict[str, Any] = {"uri": uri, "sha256": sha256}
    in_place = dest.is_dir()
    if in_place:
        existing = [p for p in dest.iterdir() if not p.name.startswith(".pull-")]
        previous = read_marker(dest)
        if previous is not None and {k: previous.get(k) for k in _IDENTITY} == marker:
            done = Pulled(dest, 0, time.monotonic() - started, True, time.time())
            try:
                _write_marker(dest, {**previous, **done.report(), FINISHED_AT: done.finished_at})
            except OSError as exc:  # the model is there: a report it cannot update is no error
                log.warning("Cannot update %s in %s: %s", MARKER, dest, exc)
            log.info("Already pulled %s into %s", uri, dest,
                     extra={"uri": uri, **done.report()})
            return done
        for stale in dest.glob(".pull-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if existing:
            if not force:
                raise PullError(
                    f"{dest} is not empty and was not pulled from {uri}; use --force to replace it"
                )
            for path in existing:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        parent = dest
    elif dest.exists():
        raise PullError(f"{dest} exists and is not a directory")
    else:
        parent = dest.parent
        parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=parent))
    try:
        log.info("Pulling %s into %s", uri, dest, extra={"uri": uri, "dest": str(dest)})
        record: dict[str, Any] | None = None
        single: Path | None = None
        digest: str | None = None
        if cache:
            try:
                single, digest, record = _fetch_cache(cache, uri, sha256, staging)
            except _CacheUnavailable as exc:
                log.warning("The model cache at %s was not used for %s (%s); pulling directly",
                            cache, uri, exc, extra={"uri": uri})
                _empty(staging)
                record = {"cacheBypass": f"the agent was not used: {exc}"}
            else:
                if sha256 is not None and digest != sha256:
                    log.warning("The model cache sent %s with sha256 %s, not %s; pulling "
                                "directly", uri, digest, sha256, extra={"uri": uri})
                    _empty(staging)
                    record = {"cacheBypass": "the agent's bytes did not match --sha256"}
        if record is None or "source" not in record:
            single, digest = fetch(uri, staging)
            record = {**(record or {}), "source": mc.DIRECT, "storeBytes": _tree_bytes(staging),
                      "cacheBytes": 0}
        if sha256 is not None:
            if single is None:
                raise PullError("--sha256 applies to a single file or archive, not a directory")
            if digest != sha256:
                raise PullError(
                    f"checksum mismatch for {uri}: expected sha256 {sha256}, got {digest}"
                )
            log.info("Verified sha256 of %s", uri, extra={"uri": uri, "sha256": digest})
        if single is not None and single.name.endswith(_ARCHIVES):
            _unpack(single, staging)
        done = Pulled(dest, int(record.get("storeBytes") or 0), time.monotonic() - started,
                      record["source"] == mc.HIT, time.time(), source=str(record["source"]),
                      cache_bytes=int(record.get("cacheBytes") or 0),
                      cache_bypass=record.get("cacheBypass"))
        marker.update({**done.report(), FINISHED_AT: done.finished_at})
        (staging / MARKER).write_text(json.dumps(marker))
        if in_place:
            entries = sorted(staging.iterdir(), key=lambda p: p.name == MARKER)
            for entry in entries:  # the marker moves last
                entry.rename(dest / entry.name)
            staging.rmdir()
        else:
            staging.rename(dest)
    except PullError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PullError(f"{uri}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Pulled %s into %s: %d bytes in %.2f s", uri, dest, done.bytes, done.seconds,
             extra={"uri": uri, "dest": str(dest), **done.report()})
    return done
