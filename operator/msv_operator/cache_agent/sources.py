"""Reading one artifact from its store, as the caller may: ``source_for(uri, env)``.

Every source answers ``head()`` (the caller's credentials are checked against the store on
every request, hit or not, so a pod never gets from the cache what its own credentials could
not fetch; the answer also gives the size and the version: ETag, else Last-Modified) and
``open()`` (the bytes). Forms (those ``model-server pull`` fetches as one file):

* ``http(s)://…``: GET/HEAD, redirects followed (hosts checked like ``artifacts``: no
  link-local addresses such as cloud metadata endpoints).
* ``s3://bucket/key``: one object, signed with AWS Signature Version 4 (``artifacts``) from
  the caller's ``AWS_*`` variables; a key ending in ``/`` or naming no object (a prefix) is
  ``NotCacheable``.
* ``file:///path``: only below the agent's configured roots (none by default); a directory
  is ``NotCacheable``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from msv_operator import artifacts

READ_TIMEOUT_SECONDS = 60.0
"""Per request and per read: a store that stalls this long fails the fetch."""
CHUNK = 1 << 20


class SourceError(Exception):
    """The store refused or failed; ``status`` is the agent's answer (403, 404 or 502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class NotCacheable(Exception):
    """An artifact the agent does not take (a directory, a prefix, a scheme); the pull
    fetches it directly."""


@dataclass(frozen=True)
class Head:
    size: int | None
    version: str | None
    """ETag, else Last-Modified (None: the store names no version)."""
    identity: str
    """What, besides the version, tells this artifact from others (URI and endpoint)."""


class Source(Protocol):
    def head(self) -> Head: ...

    def open(self) -> tuple[Iterator[bytes], int | None]: ...


def _version(headers: Any) -> str | None:
    etag = headers.get("ETag")
    if etag:
        return f"etag:{etag}"
    modified = headers.get("Last-Modified")
    return f"modified:{modified}" if modified else None


def _size(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _status_of(code: int) -> int:
    return code if code in (403, 404) else 401 if code == 401 else 502


@dataclass
class _Http:
    uri: str
    url: str
    signer: artifacts.S3Access | None = None
    identity: str = ""
    missing_is_prefix: bool = False

    def _request(self, method: str) -> Any:
        try:
            artifacts.check_host(self.url)
        except artifacts.ReadFailed as exc:
            raise SourceError(f"{self.uri}: {exc}", 403) from None
        headers: dict[str, str] = {}
        if self.signer is not None and self.signer.signs:
            headers = artifacts.sigv4_headers(method, self.url, {}, self.signer,
                                              dt.datetime.now(dt.UTC))
        opener = urllib.request.build_opener(artifacts.CheckedRedirects())
        request = urllib.request.Request(self.url, headers=headers, method=method)
        try:
            return opener.open(request, timeout=READ_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404 and self.missing_is_prefix:
                raise NotCacheable(f"{self.uri} names no object (a prefix?)") from None
            raise SourceError(f"{self.uri}: the store answered HTTP {exc.code}",
                              _status_of(exc.code)) from None
        except artifacts.ReadFailed as exc:
            raise SourceError(f"{self.uri}: {exc}", 403) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"{self.uri}: cannot read the store: {reason}") from None

    def head(self) -> Head:
        try:
            answer = self._request("HEAD")
        except SourceError as exc:
            if exc.status not in (502,) or self.signer is not None:
                raise
            answer = self._request("GET")  # a server without HEAD: read the headers only
        with answer:
            return Head(_size(answer.headers), _version(answer.headers),
                        self.identity or self.uri)

    def open(self) -> tuple[Iterator[bytes], int | None]:
        answer = self._request("GET")
        size = _size(answer.headers)

        def chunks() -> Iterator[bytes]:
            with answer:
                got = 0
                while True:
                    try:
                        block = answer.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise SourceError(f"{self.uri}: reading the store failed: {exc}"
                                          ) from None
                    if not block:
                        break
                    got += len(block)
                    yield block
                if size is not None and got != size:
                    raise SourceError(f"{self.uri}: the store sent {got} of {size} bytes")
        return chunks(), size


@dataclass
class _File:
    uri: str
    path: Path

    def head(self) -> Head:
        try:
            st = self.path.stat()
        except OSError:
            raise SourceError(f"{self.uri}: no such file", 404) from None
        return Head(st.st_size, f"file:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}", self.uri)

    def open(self) -> tuple[Iterator[bytes], int | None]:
        try:
            fh = self.path.open("rb")
        except OSError as exc:
            raise SourceError(f"{self.uri}: {exc.strerror or exc}", 404) from None
        size = self.path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with fh:
                while block := fh.read(CHUNK):
                    yield block
        return chunks(), size


def source_for(uri: str, env: Mapping[str, str], file_roots: tuple[Path, ...] = ()) -> Source:
    """The source of ``uri`` read with the caller's ``AWS_*`` variables ``env``. Raises
    NotCacheable for what the agent does not take."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        if not parts.netloc:
            raise NotCacheable(f"{uri}: no host")
        return _Http(uri, uri)
    if parts.scheme == "s3":
        bucket, key = parts.netloc, urllib.parse.unquote(parts.path.lstrip("/"))
        if not bucket or not key or key.endswith("/"):
            raise NotCacheable(f"{uri}: a prefix, not one object")
        access = artifacts.S3Access.from_env(env)
        url = artifacts.s3_url(bucket, key, access)
        identity = f"{uri}\n{access.endpoint_url or access.region}"
        return _Http(uri, url, signer=access, identity=identity, missing_is_prefix=True)
    if parts.scheme == "file":
        path = Path(urllib.parse.unquote(parts.netloc + parts.path))
        with contextlib.suppress(OSError):
            path = path.resolve()
        if not any(path.is_relative_to(root) for root in file_roots):
            raise NotCacheable(f"{uri}: not below a file root of the agent")
        if path.is_dir():
            raise NotCacheable(f"{uri}: a directory")
        return _File(uri, path)
    raise NotCacheable(f"{uri}: the scheme {parts.scheme!r} is not cached")
