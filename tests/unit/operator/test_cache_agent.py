"""The node-local model cache agent: the store (single flight, LRU under a cap honouring pins,
corruption detected, write errors bypass) and its HTTP protocol against a loopback store."""

from __future__ import annotations

import errno
import hashlib
import http.server
import itertools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from msv_operator.cache_agent import server, sources, store

from msv_contract import modelcache as mc


class Clock:
    def __init__(self) -> None:
        self.t = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self.t))


def make_cache(tmp_path: Path, cap: int = 100, **kw: Any) -> store.Cache:
    return store.Cache(tmp_path / "cache", cap, clock=Clock(), **kw)


def filler(data: bytes, calls: list[int] | None = None,
           gate: threading.Event | None = None, started: threading.Event | None = None
           ) -> store.Fill:
    def fill(writer: Any) -> int:
        if calls is not None:
            calls.append(1)
        if started is not None:
            started.set()
        if gate is not None:
            assert gate.wait(30)
        writer.write(data)
        return len(data)
    return fill


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the store ---------------------------------------------------------------------------------

def test_a_miss_fills_once_and_a_later_request_is_a_hit(tmp_path: Path) -> None:
    cache, data, calls = make_cache(tmp_path), b"x" * 10, []
    with cache.obtain("k", "u", filler(data, calls), size_hint=10, sha256=sha(data)) as lease:
        assert (lease.hit, lease.store_bytes, lease.path.read_bytes()) == (False, 10, data)
    with cache.obtain("k", "u", filler(data, calls), size_hint=10) as lease:
        assert (lease.hit, lease.store_bytes, lease.sha256) == (True, 0, sha(data))
    assert len(calls) == 1
    assert (cache.stats.hits, cache.stats.misses, cache.count, cache.bytes) == (1, 1, 1, 10)


def test_concurrent_requests_for_one_key_share_one_fill(tmp_path: Path) -> None:
    cache, data, calls = make_cache(tmp_path), b"y" * 20, []
    gate, started = threading.Event(), threading.Event()
    results: list[tuple[bool, bytes]] = []
    lock = threading.Lock()

    def get() -> None:
        fill = filler(data, calls, gate, started)
        with cache.obtain("k", "u", fill, size_hint=20) as lease, lock:
            results.append((lease.hit, lease.path.read_bytes()))

    threads = [threading.Thread(target=get) for _ in range(8)]
    threads[0].start()
    assert started.wait(30)  # the first one is filling; the others arrive meanwhile
    for t in threads[1:]:
        t.start()
    gate.set()
    for t in threads:
        t.join(30)
    assert len(calls) == 1
    assert sorted(results) == [(False, data)] + [(True, data)] * 7


def test_a_failed_fill_fails_its_waiters_and_leaves_nothing(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)

    def broken(writer: Any) -> int:
        writer.write(b"partial")
        raise sources.SourceError("the store went away")

    with pytest.raises(sources.SourceError):
        cache.obtain("k", "u", broken, size_hint=50)
    assert cache.count == 0 and list(cache.tmp_dir.iterdir()) == []
    with cache.obtain("k", "u", filler(b"ok")) as lease:  # the reservation was given back
        assert lease.path.read_bytes() == b"ok"


def test_lru_eviction_keeps_the_cap_and_never_evicts_a_pinned_entry(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, cap=100)
    for key in ("a", "b"):
        cache.obtain(key, key, filler(b"1" * 40), size_hint=40).close()
    pinned = cache.obtain("a", "a", filler(b"1" * 40))  # a hit: now a is the most recent
    with pinned:
        pass
    held = cache.obtain("a", "a", filler(b"1" * 40))   # a stays in use
    cache.obtain("b", "b", filler(b"1" * 40)).close()  # b is more recent than a now
    with cache.obtain("c", "c", filler(b"2" * 40), size_hint=40):
        # a is the least recently used, but pinned: b goes
        assert cache.entry("a") is not None and cache.entry("b") is None
        assert cache.bytes <= 100
        with pytest.raises(store.Bypass, match="full of entries in use"):
            cache.obtain("d", "d", filler(b"3" * 40), size_hint=40)
    held.close()
    with cache.obtain("d", "d", filler(b"3" * 40), size_hint=40):
        assert cache.entry("a") is None and cache.entry("c") is not None
    assert cache.stats.evictions == 2 and cache.bytes == 80
    assert sorted(p.name for p in cache.entries_dir.iterdir()) == ["c", "d"]


def test_an_artifact_larger_than_the_cap_bypasses_before_and_after_the_fetch(
        tmp_path: Path) -> None:
    cache = make_cache(tmp_path, cap=10)
    with pytest.raises(store.Bypass, match="larger than the cache"):
        cache.obtain("k", "u", filler(b"z" * 20), size_hint=20)
    with cache.obtain("k", "u", filler(b"z" * 20)) as lease:  # size unknown until fetched
        assert lease.bypass is not None and "larger than the cache" in lease.bypass
        assert lease.path.read_bytes() == b"z" * 20
        path = lease.path
    assert not path.exists() and cache.count == 0


def test_a_corrupted_or_truncated_entry_is_detected_and_fetched_again(tmp_path: Path) -> None:
    cache, data, calls = make_cache(tmp_path), b"abcdefgh" * 4, []
    cache.obtain("k", "u", filler(data, calls), sha256=sha(data)).close()
    path = cache.entries_dir / "k" / store.DATA
    path.write_bytes(b"X" + data[1:])  # same size, other bytes
    with cache.obtain("k", "u", filler(data, calls), sha256=sha(data)) as lease:
        assert not lease.hit and lease.path.read_bytes() == data
    path.write_bytes(data[:5])  # truncated
    with cache.obtain("k", "u", filler(data, calls), sha256=sha(data)) as lease:
        assert not lease.hit and lease.path.read_bytes() == data
    assert len(calls) == 3 and cache.stats.corrupt == 2


def test_a_checksum_mismatch_is_not_cached(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    with pytest.raises(store.ChecksumMismatch, match="expected sha256"):
        cache.obtain("k", "u", filler(b"evil"), sha256=sha(b"good"))
    assert cache.count == 0


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_error_or_a_full_disk_bypasses(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)

    def fill(writer: Any) -> int:
        writer.fh = _FullDisk()  # the disk fills up during the fetch
        writer.write(b"abc")
        return 3

    with pytest.raises(store.Bypass, match="disk is full"):
        cache.obtain("k", "u", fill, size_hint=3)
    assert list(cache.tmp_dir.iterdir()) == [] and cache.count == 0
    tight = store.Cache(tmp_path / "tight", 100, free_bytes=lambda p: 5)
    with pytest.raises(store.Bypass, match=r"disk is full \(5 bytes free, 50 needed\)"):
        tight.obtain("k", "u", filler(b"q" * 50), size_hint=50)


def test_entries_survive_a_restart_and_interrupted_fills_do_not(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    cache.obtain("k", "u", filler(b"kept")).close()
    (cache.entries_dir / "half").mkdir()
    (cache.entries_dir / "half" / store.DATA).write_bytes(b"no meta")
    (cache.tmp_dir / "k.partial").write_bytes(b"junk")
    again = make_cache(tmp_path)
    assert again.count == 1 and again.entry("k") is not None
    assert not (again.entries_dir / "half").exists() and list(again.tmp_dir.iterdir()) == []


def test_keys_are_content_addressed_when_pinned_and_versioned_otherwise() -> None:
    digest = "a" * 64
    assert store.key_for(digest, "s3://b/x", None) == store.key_for(digest, "https://h/y", "e")
    assert store.key_for(None, "u", "etag:1") != store.key_for(None, "u", "etag:2")
    assert store.key_for(None, "u", "etag:1") != store.key_for(None, "v", "etag:1")
    assert store.key_for(None, "u", None) is None


# -- the HTTP protocol against a loopback store -------------------------------------------------

class _Origin(http.server.SimpleHTTPRequestHandler):
    gets: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).gets.append(self.path)
        super().do_GET()


def _serve(httpd: http.server.HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def origin(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "store"
    root.mkdir()
    (root / "model.tar.gz").write_bytes(b"M" * 3000)
    _Origin.gets = []

    def handler(*args: Any, **kw: Any) -> _Origin:
        return _Origin(*args, directory=str(root), **kw)
    yield from _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[tuple[str, server.Agent]]:
    files = tmp_path / "files"
    files.mkdir()
    state = server.Agent(make_cache(tmp_path, cap=10_000), (files.resolve(),))
    httpd = server.serve(state, "127.0.0.1", 0)
    for url in _serve(httpd):
        yield url, state


def ask(agent_url: str, uri: str, sha256: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    query = urllib.parse.urlencode({"uri": uri, **({"sha256": sha256} if sha256 else {})})
    request = urllib.request.Request(f"{agent_url}{mc.ARTIFACT_PATH}?{query}",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_artifact_is_fetched_once_then_served_from_the_cache(
        origin: str, agent: tuple[str, server.Agent]) -> None:
    url, state = agent
    uri, data = f"{origin}/model.tar.gz", b"M" * 3000
    status, headers, body = ask(url, uri, sha(data))
    assert (status, headers[mc.SOURCE_HEADER], headers[mc.STORE_BYTES_HEADER], body) == (
        200, mc.MISS, "3000", data)
    status, headers, body = ask(url, uri, sha(data))
    assert (status, headers[mc.SOURCE_HEADER], headers[mc.STORE_BYTES_HEADER]) == (
        200, mc.HIT, "0")
    assert headers[mc.SHA256_HEADER] == sha(data) and body == data
    assert _Origin.gets == ["/model.tar.gz"]  # the hit asked the store only for a HEAD
    # Without a pinned digest the key is the URI and its Last-Modified: a hit as well.
    assert ask(url, uri)[1][mc.SOURCE_HEADER] == mc.MISS
    assert ask(url, uri)[1][mc.SOURCE_HEADER] == mc.HIT
    # the agent counts a stream once its last byte is sent: the client may read the metrics
    # a moment before the handler thread has counted it
    expected = (f"{mc.HITS}_total 2.0", f"{mc.STORE_BYTES}_total 6000.0",
                f"{mc.SERVED_BYTES}_total 6000.0", f"{mc.ENTRIES} 2.0")
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{url}{mc.METRICS_PATH}", timeout=30) as answer:
            metrics = answer.read().decode()
        if all(line in metrics for line in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [line for line in expected if line not in metrics] == [], metrics
    assert state.cache.count == 2


def test_store_answers_and_refusals_reach_the_caller(
        origin: str, agent: tuple[str, server.Agent]) -> None:
    url, _ = agent
    assert ask(url, f"{origin}/missing.bin")[0] == 404
    status, _, body = ask(url, f"{origin}/model.tar.gz", sha(b"other"))
    assert status == 502 and b"expected sha256" in body
    assert ask(url, "s3://bucket/prefix/")[0] == 409
    assert ask(url, "pvc://claim/x")[0] == 409
    assert ask(url, f"{origin}/model.tar.gz", "xyz")[0] == 400


def test_files_are_served_only_below_the_agents_roots(
        tmp_path: Path, agent: tuple[str, server.Agent]) -> None:
    url, _ = agent
    (tmp_path / "files" / "m.pt").write_bytes(b"weights")
    (tmp_path / "files" / "dir").mkdir()
    (tmp_path / "secret").write_bytes(b"no")
    status, headers, body = ask(url, f"file://{tmp_path}/files/m.pt")
    assert (status, headers[mc.SOURCE_HEADER], body) == (200, mc.MISS, b"weights")
    assert ask(url, f"file://{tmp_path}/files/m.pt")[1][mc.SOURCE_HEADER] == mc.HIT
    assert ask(url, f"file://{tmp_path}/files/../secret")[0] == 409
    assert ask(url, f"file://{tmp_path}/files/dir")[0] == 409


def test_a_full_disk_streams_through_with_the_reason(
        tmp_path: Path, origin: str) -> None:
    state = server.Agent(store.Cache(tmp_path / "c", 10_000, free_bytes=lambda p: 0))
    for url in _serve(server.serve(state, "127.0.0.1", 0)):
        status, headers, body = ask(url, f"{origin}/model.tar.gz")
        assert (status, headers[mc.SOURCE_HEADER], body) == (200, mc.BYPASSED, b"M" * 3000)
        assert "disk is full" in headers[mc.BYPASS_HEADER]
    assert state.cache.count == 0 and state.bypasses == {"disk": 1}
    assert state.bypass_store_bytes == 3000


def test_s3_credentials_travel_in_headers_and_sign_the_store_requests() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    src = sources.source_for("s3://bucket/models/m.tar.gz", env)
    assert isinstance(src, sources._Http)
    assert src.url == "http://127.0.0.1:9/bucket/models/m.tar.gz"
    assert src.signer is not None and src.signer.signs
    assert "http://127.0.0.1:9" in src.identity  # another endpoint is another artifact
    assert mc.CREDENTIAL_HEADERS[mc.credential_header("AWS_SESSION_TOKEN")] == (
        "AWS_SESSION_TOKEN")


def test_two_pulls_of_one_artifact_fetch_it_from_the_store_once(
        tmp_path: Path, origin: str, agent: tuple[str, server.Agent]) -> None:
    from model_server.pull import pull, read_marker

    url, _ = agent
    uri, data = f"{origin}/model.tar.gz", _tarball()
    (tmp_path / "store" / "model.tar.gz").write_bytes(data)
    digest = sha(data)
    first = read_marker(pull(uri, tmp_path / "pod-1", sha256=digest, cache=url))
    second = read_marker(pull(uri, tmp_path / "pod-2", sha256=digest, cache=url))
    assert (first["source"], second["source"]) == (mc.MISS, mc.HIT)
    assert (first["bytes"], second["bytes"]) == (len(data), 0)
    assert (tmp_path / "pod-2" / "config.json").read_text() == "{}"
    assert _Origin.gets == ["/model.tar.gz"]


def _tarball() -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        info = tarfile.TarInfo("config.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    return out.getvalue()
