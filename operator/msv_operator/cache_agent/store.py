"""The cache on the node's disk: entries by key, filled once, evicted least recently used.

Layout under the root: ``entries/<key>/data`` (the artifact's bytes) and
``entries/<key>/meta.json`` (its SHA-256, size, URI, last access; written last, so an entry
without one is an interrupted fill and is dropped at start), ``tmp/`` for fills in progress
and entries being dropped (emptied at start).

``Cache.obtain(key, fill, ...)`` returns a ``Lease`` on the entry (a pin: a pinned entry is
never evicted) after, on a hit, checking it (size, then its SHA-256 unless ``verify`` is off);
a corrupted entry is dropped and filled again. On a miss, one caller fills (``fill`` writes
the bytes to a file); concurrent callers for the same key wait for that fill (single
flight). ``Bypass`` says the bytes cannot be cached (larger than the cap, no room beside the
pinned entries, the disk full or a write failing); the caller then streams them from the
store. Errors of the store itself pass through as raised by ``fill``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

DATA = "data"
META = "meta.json"
HASH_CHUNK = 1 << 20
KEY_SHA256 = "sha256-"
KEY_VERSION = "version-"


def key_for(sha256: str | None, identity: str, version: str | None) -> str | None:
    """The entry key: ``sha256-<hex>`` when the artifact's digest is pinned (content-addressed:
    every URI with those bytes shares it), else ``version-<hash of identity and version>``
    (the URI with its endpoint, and the store's ETag/Last-Modified); None when neither is
    known (an unversioned artifact is not cached)."""
    if sha256:
        return KEY_SHA256 + sha256
    if not version:
        return None
    return KEY_VERSION + hashlib.sha256(f"{identity}\n{version}".encode()).hexdigest()


class Bypass(Exception):
    """The bytes cannot be cached; the message is the reason (reported to the caller)."""


class WriteFailed(Exception):
    """Writing a fill to the cache's disk failed (wraps the OSError)."""


class ChecksumMismatch(Exception):
    """What the store sent is not the SHA-256 the request pinned."""


@dataclass
class Entry:
    key: str
    size: int
    sha256: str
    uri: str
    last_access: float
    pins: int = 0

    def meta(self) -> dict[str, object]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256, "uri": self.uri,
                "lastAccess": self.last_access}


class _Writer:
    """A file that hashes what it is given and turns write errors into WriteFailed."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            self.fh.write(data)
        except OSError as exc:
            raise WriteFailed(_describe(exc)) from exc
        self.digest.update(data)
        self.size += len(data)


Fill = Callable[[_Writer], int]
"""Writes the artifact to the writer; returns the bytes it read from the store."""


@dataclass
class Lease:
    """A pinned entry (or, for ``source == "bypassed"``, a one-off file) to stream."""

    path: Path
    size: int
    sha256: str
    hit: bool
    store_bytes: int
    bypass: str | None = None
    _release: Callable[[], None] = lambda: None

    def close(self) -> None:
        self._release()
        self._release = lambda: None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class Stats:
    """What the metrics report (the server exports it)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt: int = 0
    store_bytes: int = 0


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the cache's disk is full"
    return f"cannot write to the cache: {exc.strerror or exc}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class Cache:
    """The cache under ``root``, at most ``max_bytes`` of entries."""

    def __init__(self, root: Path, max_bytes: int, *, verify: bool = True,
                 clock: Callable[[], float] = time.time,
                 free_bytes: Callable[[Path], int] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max bytes {max_bytes}: expected a positive number")
        self.root = root
        self.max_bytes = max_bytes
        self.verify = verify
        self.clock = clock
        self.free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.entries_dir = root / "entries"
        self.tmp_dir = root / "tmp"
        self.stats = Stats()
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._flights: dict[str, _Flight] = {}
        self._reserved = 0
        self._load()

    # -- state ------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    def entry(self, key: str) -> Entry | None:
        with self._lock:
            return self._entries.get(key)

    def _load(self) -> None:
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.entries_dir.iterdir()):
            try:
                meta = json.loads((path / META).read_text())
                entry = Entry(key=path.name, size=int(meta["size"]), sha256=str(meta["sha256"]),
                              uri=str(meta.get("uri", "")),
                              last_access=float(meta.get("lastAccess", 0.0)))
                if entry.key != meta.get("key") or (path / DATA).stat().st_size != entry.size:
                    raise ValueError("size or key does not match")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("Dropping cache entry %s: %s", path.name, exc)
                shutil.rmtree(path, ignore_errors=True)
                continue
            self._entries[entry.key] = entry
        while self._entries and self._total() > self.max_bytes:  # the cap was lowered
            self._evict_one()
        log.info("Model cache at %s: %d entries, %d of %d bytes", self.root,
                 len(self._entries), self._total(), self.max_bytes)

    def _total(self) -> int:
        return sum(e.size for e in self._entries.values())

    # -- obtain -----------------------------------------------------------------------------

    def obtain(self, key: str, uri: str, fill: Fill, *, size_hint: int | None = None,
               sha256: str | None = None) -> Lease:
        """A lease on the entry ``key``, filled by ``fill`` when it is missing. Raises
        Bypass (not cacheable now), ChecksumMismatch, or what ``fill`` raised."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.pins += 1
                    flight = None
                    leader = False
                else:
                    flight = self._flights.get(key)
                    leader = flight is None
                    if leader:
                        flight = self._flights[key] = _Flight()
            if entry is not None:
                lease = self._check(entry)
                if lease is not None:
                    return lease
                continue  # dropped as corrupted: fill it again
            assert flight is not None
            if not leader:
                flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                continue  # the leader filled it (or it was evicted already: fill again)
            try:
                lease = self._fill(key, uri, fill, size_hint, sha256)
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
            return lease

    def _check(self, entry: Entry) -> Lease | None:
        """A lease on the pinned ``entry`` if its bytes are intact; else drop it, None."""
        data = self.entries_dir / entry.key / DATA
        try:
            size = data.stat().st_size
            intact = size == entry.size and (not self.verify or file_sha256(data) == entry.sha256)
            reason = "its bytes do not match their SHA-256" if size == entry.size else (
                f"its size is {size} bytes, not {entry.size}")
        except OSError as exc:
            intact, reason = False, f"cannot read it: {exc.strerror or exc}"
        if not intact:
            log.warning("Cache entry %s (%s) is corrupted: %s; fetching it again", entry.key,
                        entry.uri, reason)
            with self._lock:
                entry.pins -= 1
                self.stats.corrupt += 1
                if self._entries.get(entry.key) is entry:
                    self._remove(entry)
            return None
        with self._lock:
            entry.last_access = max(self.clock(), entry.last_access)
            self.stats.hits += 1
        self._write_meta(entry)
        return Lease(data, entry.size, entry.sha256, hit=True, store_bytes=0,
                     _release=lambda: self._unpin(entry))

    def _unpin(self, entry: Entry) -> None:
        with self._lock:
            entry.pins -= 1

    def _fill(self, key: str, uri: str, fill: Fill, size_hint: int | None,
              sha256: str | None) -> Lease:
        if size_hint is not None:
            self._reserve(size_hint)
        reserved = size_hint or 0
        tmp = self.tmp_dir / f"{key}.{uuid.uuid4().hex}"
        try:
            try:
                with tmp.open("wb") as fh:
                    writer = _Writer(fh)
                    store_bytes = fill(writer)
            except OSError as exc:  # opening or closing the file
                raise WriteFailed(_describe(exc)) from exc
            with self._lock:
                self.stats.misses += 1
                self.stats.store_bytes += store_bytes
            got = writer.digest.hexdigest()
            if sha256 is not None and got != sha256:
                raise ChecksumMismatch(f"{uri}: expected sha256 {sha256}, the store sent {got}")
            entry = Entry(key, writer.size, got, uri, self.clock(), pins=1)
            with self._lock:
                self._reserved -= reserved
                reserved = 0
                fits = self._make_room(entry.size)
                if fits:
                    self._reserved += entry.size
                    reserved = entry.size
            if not fits:
                # Fetched, but there is no room: serve this copy once, then delete it.
                return Lease(tmp, entry.size, got, hit=False, store_bytes=store_bytes,
                             bypass=self._no_room(entry.size),
                             _release=lambda: tmp.unlink(missing_ok=True))
            try:
                self._install(tmp, entry)
            except OSError as exc:
                return Lease(tmp, entry.size, got, hit=False, store_bytes=store_bytes,
                             bypass=_describe(exc), _release=lambda: tmp.unlink(missing_ok=True))
            with self._lock:
                self._entries[key] = entry
            return Lease(self.entries_dir / key / DATA, entry.size, got, hit=False,
                         store_bytes=store_bytes, _release=lambda: self._unpin(entry))
        except WriteFailed as exc:
            tmp.unlink(missing_ok=True)
            raise Bypass(str(exc)) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._reserved -= reserved

    def _install(self, tmp: Path, entry: Entry) -> None:
        final = self.entries_dir / entry.key
        if final.exists():  # a leftover of a drop that did not finish
            shutil.rmtree(final)
        final.mkdir()
        try:
            tmp.rename(final / DATA)
            self._write_meta(entry, strict=True)
        except OSError:
            if (final / DATA).exists():
                (final / DATA).rename(tmp)
            shutil.rmtree(final, ignore_errors=True)
            raise

    def _write_meta(self, entry: Entry, strict: bool = False) -> None:
        path = self.entries_dir / entry.key / META
        part = path.with_name(META + ".part")
        try:
            part.write_text(json.dumps(entry.meta()))
            part.replace(path)
        except OSError as exc:
            if strict:
                raise
            log.warning("Cannot record the last access of %s: %s", entry.key, exc)

    # -- room -------------------------------------------------------------------------------

    def _no_room(self, size: int) -> str:
        if size > self.max_bytes:
            return f"the artifact ({size} bytes) is larger than the cache ({self.max_bytes} bytes)"
        return "the cache is full of entries in use"

    def _reserve(self, size: int) -> None:
        """Make room for a fill of ``size`` bytes and hold it, or raise Bypass."""
        with self._lock:
            if not self._make_room(size):
                raise Bypass(self._no_room(size))
            self._reserved += size
        try:
            free = self.free_bytes(self.root)
        except OSError:
            free = size
        if free < size:
            with self._lock:
                self._reserved -= size
            raise Bypass(f"the cache's disk is full ({free} bytes free, {size} needed)")

    def _make_room(self, size: int) -> bool:
        """Under the lock: evict unpinned entries, least recently used first, until ``size``
        more bytes fit under the cap; False (nothing evicted) when they cannot."""
        if size > self.max_bytes:
            return False
        evictable = sorted((e for e in self._entries.values() if e.pins == 0),
                           key=lambda e: e.last_access)
        room = self.max_bytes - self._total() - self._reserved
        if room + sum(e.size for e in evictable) < size:
            return False
        for entry in evictable:
            if room >= size:
                break
            room += entry.size
            self._remove(entry)
            self.stats.evictions += 1
            log.info("Evicted %s (%s, %d bytes) from the model cache", entry.key, entry.uri,
                     entry.size)
        return True

    def _evict_one(self) -> None:
        oldest = min(self._entries.values(), key=lambda e: e.last_access)
        self._remove(oldest)
        self.stats.evictions += 1

    def _remove(self, entry: Entry) -> None:
        """Under the lock: forget ``entry`` and delete its files (moved aside first, so a
        fill of the same key can start at once)."""
        del self._entries[entry.key]
        aside = self.tmp_dir / f"drop-{entry.key}.{uuid.uuid4().hex}"
        with contextlib.suppress(OSError):
            (self.entries_dir / entry.key).rename(aside)
        shutil.rmtree(aside, ignore_errors=True)

