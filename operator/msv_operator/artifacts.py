"""The only module that reads model artifacts: what the GPU-fit estimate needs of one, never
the whole of it (stdlib ``urllib``, bounded, with timeouts).

``read(uri)`` returns an ``Artifact`` (safetensors headers, config.json, size) or a
``NotChecked`` saying why not; it never raises for what it meets on the network or in the
files. By URI (the forms ``model-server pull`` fetches):

* ``http(s)://…/x.safetensors`` and ``s3://bucket/…/x.safetensors``: two range requests, the
  first 8 bytes (the header's length) then the header (at most ``gpufit.MAX_HEADER_BYTES``),
  plus ``config.json`` beside it when there is one; ``…/model.safetensors.index.json``: the
  index, then every shard's header the same way.
* ``s3://bucket/prefix/`` (or a key that is no object: a prefix, as the pull reads it): one
  listing (the first 1,000 keys), then the headers of the ``*.safetensors`` files directly
  below the prefix and its ``config.json``.
* an archive (``.tar``, ``.tar.gz``, ``.tgz``; what the project's model stores publish):
  streamed from its start, at most ``MAX_ARCHIVE_SCAN_BYTES`` of it (unpacking to at most
  ``MAX_ARCHIVE_INFLATED``), until the headers of the safetensors members and config.json
  are read (members come in archive order; a sharded model whose shards do not all fit in
  that window is estimated from the size).
* anything else (TorchScript ``.pt``, ``.keras``, ``.zip``, pickled ``.bin``): its size only.
* ``pvc://`` and ``file://``: not checked: the volume or the node's path is mounted into the
  pods, and the operator mounts neither.

S3 requests are signed with AWS Signature Version 4, implemented here with ``hmac`` and
``hashlib`` (boto3 is not an operator dependency), from credentials in the pull's
convention (``S3Access.from_env``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``); without
credentials they go unsigned (public buckets). A custom endpoint is addressed path-style
(``<endpoint>/<bucket>/<key>``), Amazon S3 virtual-hosted (``<bucket>.s3.<region>.amazonaws
.com``). Every request has ``timeout`` seconds, the whole read ``deadline`` seconds. Hosts
that resolve to link-local addresses (cloud metadata endpoints) are refused, redirects
included, and no message quotes what a server answered beyond its status and, for S3, its
error code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import posixpath
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from msv_operator import gpufit

TIMEOUT_SECONDS = 10.0
"""Per request."""
DEADLINE_SECONDS = 30.0
"""For the whole read of one artifact."""
MAX_SMALL_FILE = 4 * 2**20
"""config.json and the shard index."""
MAX_LISTING_BYTES = 8 * 2**20
MAX_SHARDS = 128
MAX_ARCHIVE_SCAN_BYTES = 64 * 2**20
"""Of an archive, read from its start."""
MAX_ARCHIVE_INFLATED = 1 * 2**30
"""Of a compressed archive, what its first bytes may unpack to (more is not looked at)."""
CHUNK = 2**16
CONFIG = "config.json"
INDEX_SUFFIX = ".safetensors.index.json"
SAFETENSORS = ".safetensors"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class NotChecked:
    """The fit cannot be checked; ``reason`` says why (for the Warning Event)."""

    uri: str
    reason: str

    @property
    def message(self) -> str:
        return (f"the GPU memory fit of {self.uri} was not checked: {self.reason}; the pods "
                "are placed as spec.gpu says")


@dataclass(frozen=True)
class Artifact:
    """What was read of an artifact."""

    uri: str
    headers: tuple[gpufit.Header, ...] = ()
    """Every safetensors file's header (empty: estimate from the size)."""
    config: Mapping[str, Any] | None = None
    size_bytes: int | None = None
    """The artifact's bytes (an archive's compressed size)."""
    notes: tuple[str, ...] = ()

    def estimate(self, workload: gpufit.Workload) -> gpufit.MemoryEstimate:
        """The memory estimate for ``workload`` from what was read."""
        if self.headers:
            est = gpufit.estimate_from_headers(self.headers, workload, self.config)
        else:
            assert self.size_bytes, "an Artifact holds headers or a size"
            est = gpufit.estimate_from_size(self.size_bytes, workload, self.config)
        if self.notes:
            est = dataclasses.replace(est, notes=self.notes + est.notes)
        return est


@dataclass(frozen=True)
class S3Access:
    """Where S3 is and, when both keys are set, whom requests are signed as."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    """A custom endpoint (MinIO, moto, ...); None: Amazon S3."""

    @property
    def signs(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Access:
        """From ``AWS_*`` variables, the pull's convention (a credentials Secret's decoded
        data): keys, session token, region, endpoint (``AWS_ENDPOINT_URL`` or
        ``AWS_ENDPOINT_URL_S3``); without a key pair, requests go unsigned."""
        url = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
        return cls(env.get("AWS_ACCESS_KEY_ID") or None,
                   env.get("AWS_SECRET_ACCESS_KEY") or None,
                   env.get("AWS_SESSION_TOKEN") or None,
                   env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
                   url.rstrip("/") if url else None)


# ---- AWS Signature Version 4 (pure) ----------------------------------------------------------

def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def sigv4_headers(method: str, url: str, headers: Mapping[str, str], creds: S3Access,
                  now: dt.datetime, service: str = "s3",
                  payload_sha256: str = EMPTY_SHA256) -> dict[str, str]:
    """``headers`` plus ``x-amz-date``, ``x-amz-content-sha256`` (the empty body's hash: a
    GET sends none), the session token and ``Authorization`` for ``url`` (whose path is sent
    as it is written: already encoded)."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed |= {"host": parts.netloc, "x-amz-date": amz_date,
               "x-amz-content-sha256": payload_sha256}
    if creds.session_token:
        signed["x-amz-security-token"] = creds.session_token
    names = sorted(signed)
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in
                     sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    canonical = "\n".join([method, parts.path or "/", query,
                           "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
                           payload_sha256])
    scope = f"{day}/{creds.region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    assert creds.signs, "signing needs both keys"
    key = ("AWS4" + str(creds.secret_access_key)).encode()
    for part in (day, creds.region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


def s3_url(bucket: str, key: str, access: S3Access, query: str = "") -> str:
    """The object's URL: path-style on a custom endpoint, virtual-hosted on Amazon S3 (path
    style there too for bucket names with dots, which TLS names cannot hold)."""
    path = _quote(key, safe="/-_.~")
    suffix = f"?{query}" if query else ""
    if access.endpoint_url:
        return f"{access.endpoint_url}/{bucket}/{path}{suffix}"
    region = access.region
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}/{path}{suffix}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{path}{suffix}"


# ---- requests --------------------------------------------------------------------------------

class ReadFailed(Exception):
    """A request or a file the read cannot use; the message is the NotChecked reason (the
    model cache agent's reason too)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status that answered, if one did."""


def check_host(url: str) -> None:
    """Raise ReadFailed when ``url``'s host does not resolve or resolves to a link-local,
    unspecified or multicast address (also used by the model cache agent)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ReadFailed(f"cannot resolve {host}: {exc.strerror or exc}") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            raise ReadFailed(f"{host} resolves to {ip}, a link-local address (such as a cloud "
                          "metadata endpoint); the operator does not read from it")


class CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects of unsigned requests only, each target's host checked like the first."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if req.has_header("Authorization"):
            raise ReadFailed(f"the store redirected a signed request (HTTP {code}); the bucket "
                          "may be in another region than the credentials' AWS_REGION")
        check_host(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Client:
    creds: S3Access | None
    """Signs requests when it holds both keys."""
    timeout: float
    deadline: float
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], dt.datetime] = _utcnow
    opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(CheckedRedirects()))

    def open(self, url: str, headers: Mapping[str, str] | None = None, signed: bool = False
             ) -> Any:
        if self.clock() > self.deadline:
            raise ReadFailed("the artifact took longer than its read deadline")
        check_host(url)
        sent = dict(headers or {})
        if signed and self.creds is not None and self.creds.signs:
            sent = sigv4_headers("GET", url, sent, self.creds, self.now())
        request = urllib.request.Request(url, headers=sent)
        try:
            return self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ReadFailed(_http_error(url, exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError | socket.timeout):
                reason = f"no answer within {self.timeout:g} s"
            raise ReadFailed(f"cannot read {_where(url)}: {reason}") from None

    def read(self, url: str, start: int, length: int, signed: bool) -> tuple[bytes, int | None]:
        """Bytes [start, start + length) of ``url`` (fewer at its end) and the file's size
        when the answer says it; a server that ignores the range is read no further."""
        if length <= 0:
            return b"", None
        try:
            answer = self.open(url, {"Range": f"bytes={start}-{start + length - 1}"}, signed)
        except ReadFailed as exc:
            if exc.status == 416:  # the file ends before ``start``
                return b"", None
            raise
        with answer:
            if answer.status == 206:
                total = _total(answer.headers.get("Content-Range"))
                return _bounded(answer, length), total
            size = answer.headers.get("Content-Length")
            data = _bounded(answer, start + length)[start:]
            return data, int(size) if size and size.isdigit() else None

    def small(self, url: str, signed: bool, limit: int = MAX_SMALL_FILE,
              missing: tuple[int, ...] = (404,)) -> bytes | None:
        """A whole small file; None when the answer's status is one of ``missing``."""
        try:
            answer = self.open(url, signed=signed)
        except ReadFailed as exc:
            if exc.status in missing:
                return None
            raise
        with answer:
            data = _bounded(answer, limit + 1)
        if len(data) > limit:
            raise ReadFailed(f"{_where(url)} is larger than {limit} bytes")
        return data

    def stream(self, url: str, signed: bool) -> tuple[Iterator[bytes], int | None, Any]:
        answer = self.open(url, signed=signed)
        size = answer.headers.get("Content-Length")

        def chunks() -> Iterator[bytes]:
            while block := answer.read(CHUNK):
                yield block
        return chunks(), int(size) if size and size.isdigit() else None, answer


def _bounded(answer: Any, limit: int) -> bytes:
    out = bytearray()
    while len(out) < limit:
        block = answer.read(min(CHUNK, limit - len(out)))
        if not block:
            break
        out += block
    return bytes(out)


def _total(content_range: str | None) -> int | None:
    """The size in ``Content-Range: bytes 0-7/12345`` (None for ``*``)."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _where(url: str) -> str:
    """The URL without its query (a listing's parameters say nothing to a reader)."""
    return url.split("?", 1)[0]


def _http_error(url: str, exc: urllib.error.HTTPError) -> str:
    code = ""
    try:
        body = exc.read(4096)
        found = ElementTree.fromstring(body).find("Code") if body.startswith(b"<") else None
        if found is not None and found.text and found.text.isalnum():
            code = f" {found.text}"
    except (ElementTree.ParseError, OSError, ValueError):
        pass
    return f"{_where(url)} answered HTTP {exc.code}{code}"


# ---- the artifact's forms ---------------------------------------------------------------------

def _header(client: _Client, url: str, signed: bool, limit: int
            ) -> tuple[gpufit.Header, int | None]:
    prefix, size = client.read(url, 0, gpufit.LENGTH_BYTES, signed)
    try:
        n = gpufit.header_length(prefix, limit)
        raw, _ = client.read(url, gpufit.LENGTH_BYTES, n, signed)
        if len(raw) < n:
            raise gpufit.HeaderError(f"the file ends {len(raw)} bytes into its {n}-byte header")
        return gpufit.parse_header(raw), size
    except gpufit.HeaderError as exc:
        raise ReadFailed(f"{_where(url)}: {exc}") from None


def _config(client: _Client, url: str, signed: bool) -> Mapping[str, Any] | None:
    """config.json beside the weights; None when there is none (S3 answers 403 for a
    missing key to whom may not list the bucket)."""
    data = client.small(url, signed, missing=(403, 404))
    if data is None:
        return None
    return _json_object(data, _where(url))


def _json_object(data: bytes, where: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReadFailed(f"{where} is not JSON") from None
    if not isinstance(doc, dict):
        raise ReadFailed(f"{where} is not a JSON object")
    return doc


def _sibling(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    path = posixpath.join(posixpath.dirname(parts.path), _quote(name, safe="/-_.~"))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _shards(index: Mapping[str, Any], where: str) -> list[str]:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ReadFailed(f"{where} has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    if len(names) > MAX_SHARDS:
        raise ReadFailed(f"{where} lists {len(names)} shards, more than {MAX_SHARDS}")
    if any("/" in n or n.startswith(".") for n in names):
        raise ReadFailed(f"{where} names a shard outside its directory")
    return names


def _file(client: _Client, uri: str, url: str, signed: bool, limit: int) -> Artifact:
    """One URL: a safetensors file, a shard index, an archive, or a file known by size."""
    path = urllib.parse.urlsplit(url).path.lower()
    if path.endswith(SAFETENSORS):
        header, size = _header(client, url, signed, limit)
        return Artifact(uri, (header,), _config(client, _sibling(url, CONFIG), signed), size)
    if path.endswith(INDEX_SUFFIX):
        index = _json_object(client.small(url, signed, missing=()) or b"", _where(url))
        headers, total = [], 0
        for name in _shards(index, _where(url)):
            header, size = _header(client, _sibling(url, name), signed, limit)
            headers.append(header)
            total += size or 0
        return Artifact(uri, tuple(headers), _config(client, _sibling(url, CONFIG), signed),
                        total or None)
    if path.endswith(TAR_SUFFIXES):
        return _archive(client, uri, url, signed, limit)
    _, size = client.read(url, 0, 1, signed)
    if not size:
        raise ReadFailed(f"{_where(url)} did not say its size")
    return Artifact(uri, (), None, size)


def _s3(client: _Client, access: S3Access, uri: str, limit: int) -> Artifact:
    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, urllib.parse.unquote(parts.path.lstrip("/"))
    signed = access.signs

    def url(k: str, query: str = "") -> str:
        return s3_url(bucket, k, access, query)

    if key and not key.endswith("/"):
        try:
            return _file(client, uri, url(key), signed, limit)
        except ReadFailed as exc:
            if exc.status != 404 or not str(exc).startswith(url(key)):
                raise
        key += "/"  # no such object: a prefix, as the pull reads it
    query = f"list-type=2&prefix={_quote(key)}"
    listing = client.small(url("", query), signed, MAX_LISTING_BYTES)
    if listing is None:
        raise ReadFailed(f"s3://{bucket}: no such bucket", 404)
    objects = _listed(listing, key)
    if not objects:
        raise ReadFailed(f"{uri}: no objects found")
    files = {name: size for name, size in objects.items() if "/" not in name}
    shards = sorted(n for n in files if n.endswith(SAFETENSORS))
    if len(shards) > MAX_SHARDS:
        raise ReadFailed(f"{uri} holds more than {MAX_SHARDS} safetensors files")
    if not shards and len(files) == 1 and next(iter(files)).lower().endswith(TAR_SUFFIXES):
        return _archive(client, uri, url(key + next(iter(files))), signed, limit)
    headers = tuple(_header(client, url(key + n), signed, limit)[0] for n in shards)
    config = _config(client, url(key + CONFIG), signed) if CONFIG in files else None
    return Artifact(uri, headers, config, sum(objects.values()))


def _listed(xml: bytes, prefix: str) -> dict[str, int]:
    """Key (relative to ``prefix``) -> size of a ListObjectsV2 answer."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        raise ReadFailed("the bucket listing is not XML") from None
    out: dict[str, int] = {}
    for item in root.iter():
        if not item.tag.endswith("Contents"):
            continue
        key = size = None
        for child in item:
            if child.tag.endswith("Key"):
                key = child.text or ""
            elif child.tag.endswith("Size"):
                size = child.text or ""
        if key and key.startswith(prefix) and size and size.isdigit() and key != prefix:
            out[key[len(prefix):]] = int(size)
    return out


# ---- archives --------------------------------------------------------------------------------

TAR_BLOCK = 512


def tar_entry(block: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, type) of a tar header block; None for the end-of-archive block;
    ``ReadFailed`` when the block is not a tar header (bad checksum)."""
    if len(block) < TAR_BLOCK:
        raise ReadFailed("the archive ends inside a member header")
    if block == bytes(TAR_BLOCK):
        return None
    stored = block[148:156].split(b"\0", 1)[0].strip()
    check = sum(block[:148]) + 8 * 32 + sum(block[156:TAR_BLOCK])
    try:
        if int(stored or b"-1", 8) != check:
            raise ValueError
    except ValueError:
        raise ReadFailed("not a tar archive (a member header's checksum does not match)") from None
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        name = f"{prefix}/{name}" if prefix else name
    field_ = block[124:136]
    if field_[0] & 0x80:  # base-256 for sizes past 8 GiB
        size = int.from_bytes(field_[1:], "big")
    else:
        size = int(field_.split(b"\0", 1)[0].strip() or b"0", 8)
    return name, size, block[156:157]


class _TarScan:
    """Fed an archive's bytes in order: keeps config.json and each top-level safetensors
    member's header, skips the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.skip = 0
        self.member: tuple[str, int] | None = None
        """The member being read: (name, its size)."""
        self.want = 0
        self.padded = 0
        self.long_name: str | None = None
        """The next member's name from a GNU long-name or pax header."""
        self.long_size: int | None = None
        """The next member's size from a pax header (members past 8 GiB)."""
        self.config: Mapping[str, Any] | None = None
        self.headers: list[tuple[str, gpufit.Header]] = []
        self.names: list[str] = []
        self.ended = False

    @property
    def enough(self) -> bool:
        """The end, or config.json and an unsharded model's header: nothing more to read."""
        return self.ended or (self.config is not None and len(self.headers) == 1
                              and "-of-" not in self.headers[0][0])

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while not self.enough:
            if self.skip:
                n = min(self.skip, len(self.buffer))
                del self.buffer[:n]
                self.skip -= n
                if self.skip:
                    return
            if self.member is None:
                if len(self.buffer) < TAR_BLOCK:
                    return
                self._begin(bytes(self.buffer[:TAR_BLOCK]))
                del self.buffer[:TAR_BLOCK]
                continue
            if not self._take():
                return

    def _begin(self, block: bytes) -> None:
        entry = tar_entry(block)
        if entry is None:
            self.ended = True
            return
        name, size, kind = entry
        if self.long_name is not None:
            name, self.long_name = self.long_name, None
        if self.long_size is not None:
            size, self.long_size = self.long_size, None
        name = name.removeprefix("./")
        padded = -(-size // TAR_BLOCK) * TAR_BLOCK
        if kind in (b"L", b"x") or (kind in (b"0", b"\0") and "/" not in name and (
                name == CONFIG or name.endswith(SAFETENSORS))):
            self.member = (name if kind in (b"0", b"\0") else kind.decode(), size)
            self.want = min(size, MAX_SMALL_FILE) if not name.endswith(SAFETENSORS) else (
                gpufit.LENGTH_BYTES)
            self.padded = padded
        else:
            if kind in (b"0", b"\0"):
                self.names.append(name)
            self.skip = padded

    def _take(self) -> bool:
        assert self.member is not None
        name, size = self.member
        if name.endswith(SAFETENSORS) and self.want == gpufit.LENGTH_BYTES:
            if len(self.buffer) < self.want:
                return False
            n = gpufit.header_length(bytes(self.buffer[:8]), self.limit)
            if 8 + n > size:
                raise gpufit.HeaderError(f"member {name}: its header runs past its end")
            self.want = 8 + n
        if len(self.buffer) < self.want:
            return False
        data = bytes(self.buffer[:self.want])
        del self.buffer[:self.want]
        rest = self.padded - self.want
        if name == "L":
            self.long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif name == "x":
            records = _pax(data)
            self.long_name = records.get("path") or self.long_name
            size_ = records.get("size", "")
            self.long_size = int(size_) if size_.isdigit() else self.long_size
        elif name == CONFIG:
            self.config = _json_object(data, f"archive member {CONFIG}")
            self.names.append(name)
        else:
            self.headers.append((name, gpufit.parse_header(data[8:])))
            self.names.append(name)
        self.member, self.skip = None, rest
        return True


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (``<length> <key>=<value>\\n`` each)."""
    out = {}
    for record in data.decode("utf-8", "replace").split("\n"):
        _, _, kv = record.partition(" ")
        key, sep, value = kv.partition("=")
        if sep:
            out[key] = value
    return out


def _archive(client: _Client, uri: str, url: str, signed: bool, limit: int) -> Artifact:
    chunks, size, answer = client.stream(url, signed)
    scan = _TarScan(limit)
    gz = urllib.parse.urlsplit(url).path.lower().endswith((".gz", ".tgz"))
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
    read = inflated = 0
    try:
        with answer:
            for block in chunks:
                if client.clock() > client.deadline:
                    raise ReadFailed("the artifact took longer than its read deadline")
                read += len(block)
                pending = block
                while pending and not scan.enough and inflated < MAX_ARCHIVE_INFLATED:
                    if inflate is None:
                        data, pending = pending, b""
                    else:  # at most CHUNK x 16 bytes out of each step (gzip bombs)
                        data = inflate.decompress(pending, 16 * CHUNK)
                        pending = inflate.unconsumed_tail
                    inflated += len(data)
                    scan.feed(data)
                if (scan.enough or read >= MAX_ARCHIVE_SCAN_BYTES
                        or inflated >= MAX_ARCHIVE_INFLATED):
                    break
    except zlib.error:
        raise ReadFailed(f"{_where(url)} is not a gzip stream") from None
    except gpufit.HeaderError as exc:
        raise ReadFailed(f"{_where(url)}: {exc}") from None
    if not size:
        raise ReadFailed(f"{_where(url)} did not say its size")
    shard_names = [n for n, _ in scan.headers]
    complete = scan.ended or not any("-of-" in n for n in shard_names)
    if scan.headers and complete:
        return Artifact(uri, tuple(h for _, h in scan.headers), scan.config, size)
    notes: tuple[str, ...] = ()
    if scan.headers:
        notes = (f"the archive's safetensors shards past its first "
                 f"{MAX_ARCHIVE_SCAN_BYTES // 2**20} MiB were not read",)
    return Artifact(uri, (), scan.config, size, notes)


# ---- the entry point -------------------------------------------------------------------------

_UNREAD_SCHEMES = {
    "pvc": "a pvc:// volume is mounted into the pods only; the operator does not mount it",
    "file": "a file:// path is on the node that runs the pod; the operator cannot read it",
}


def _reading(uri: str, s3: S3Access | None, timeout: float, deadline: float,
             read_with: Callable[[_Client, S3Access, str], Any]) -> Any:
    """``read_with(client, access, scheme)`` on ``uri`` when the operator reads its scheme
    (``s3://``, ``http(s)://``), within ``timeout`` per request and ``deadline`` in all; a
    failure becomes ``NotChecked`` naming why."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in _UNREAD_SCHEMES:
        return NotChecked(uri, _UNREAD_SCHEMES[scheme])
    if scheme not in ("http", "https", "s3"):
        return NotChecked(uri, f"the URI scheme {scheme or '(none)'!r} is not one the "
                          "operator reads")
    access = s3 or S3Access()
    client = _Client(access if scheme == "s3" else None, timeout, time.monotonic() + deadline)
    try:
        return read_with(client, access, scheme)
    except ReadFailed as exc:
        return NotChecked(uri, str(exc))
    except (OSError, http.client.HTTPException) as exc:  # while reading an answer's body
        return NotChecked(uri, f"reading it failed: {type(exc).__name__}: {exc}")
    except ValueError as exc:  # what a file holds, past the checks above
        return NotChecked(uri, f"it holds what the operator cannot read: {exc}")


def read(uri: str, *, s3: S3Access | None = None, timeout: float = TIMEOUT_SECONDS,
         deadline: float = DEADLINE_SECONDS, max_header_bytes: int = gpufit.MAX_HEADER_BYTES
         ) -> Artifact | NotChecked:
    """What the GPU-fit estimate needs of ``uri``, or why it could not be read; ``s3``:
    the endpoint and keys for s3:// (None: Amazon S3, unsigned)."""
    def headers(client: _Client, access: S3Access, scheme: str) -> Artifact:
        if scheme == "s3":
            return _s3(client, access, uri, max_header_bytes)
        return _file(client, uri, uri, False, max_header_bytes)
    result: Artifact | NotChecked = _reading(uri, s3, timeout, deadline, headers)
    return result


@dataclass(frozen=True)
class SmallFile:
    """A small object read whole (``read_small``): its bytes, None when it does not exist."""

    uri: str
    data: bytes | None


def read_small(uri: str, *, s3: S3Access | None = None, limit: int = MAX_SMALL_FILE,
               timeout: float = TIMEOUT_SECONDS, deadline: float = DEADLINE_SECONDS
               ) -> SmallFile | NotChecked:
    """The whole object at ``uri`` (``s3://`` or ``http(s)://``, at most ``limit`` bytes; the
    optimization pipeline's MANIFEST and report.json), or why it could not be read; a 404
    (S3 ``NoSuchKey``) is an answer: ``SmallFile(uri, None)``."""
    def whole(client: _Client, access: S3Access, scheme: str) -> SmallFile:
        if scheme == "s3":
            parts = urllib.parse.urlsplit(uri)
            url = s3_url(parts.netloc, urllib.parse.unquote(parts.path.lstrip("/")), access)
            return SmallFile(uri, client.small(url, access.signs, limit))
        return SmallFile(uri, client.small(uri, False, limit))
    result: SmallFile | NotChecked = _reading(uri, s3, timeout, deadline, whole)
    return result
