"""msv_operator.artifacts: reading only what the estimate needs, over HTTP (a local server
with Range support) and S3 (moto on loopback, and AWS's signing example), and never raising."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import http.server
import json
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors_headers as sh
from msv_operator import artifacts, gpufit
from msv_operator.artifacts import Artifact, NotChecked, S3Access

from localcluster import modelstores

LLAMA = sh.LLAMA_2_13B
DECLARED = 2 * LLAMA.parameters + 40_000  # what a whole 13B fp16 file would weigh


@dataclass
class Store:
    """Files a local HTTP server serves: path -> (bytes, the size it claims or None)."""

    files: dict[str, tuple[bytes, int | None]] = field(default_factory=dict)
    ranges: bool = True
    redirects: dict[str, str] = field(default_factory=dict)
    errors: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)
    sent: dict[str, int] = field(default_factory=dict)
    """Bytes of body sent, by path (counted before they are written)."""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


class Handler(http.server.BaseHTTPRequestHandler):
    store: Store

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        store = self.store
        store.requests.append((self.path, self.headers.get("Range")))
        if self.path in store.slow:
            time.sleep(1.0)
        if self.path in store.errors:
            code, body = store.errors[self.path]
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path in store.redirects:
            self.send_response(302)
            self.send_header("Location", store.redirects[self.path])
            self.end_headers()
            return
        if self.path not in store.files:
            self.send_error(404)
            return
        data, declared = store.files[self.path]
        total = declared or len(data)
        wanted = self.headers.get("Range")
        if wanted and store.ranges:
            first, last = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
            if first >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.end_headers()
                return
            body = data[first:last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{first + len(body) - 1}/{total}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        store.sent[self.path] = store.sent.get(self.path, 0) + len(body)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store()
    handler = type("H", (Handler,), {"store": s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()


def read_ok(uri: str, **kw: Any) -> Artifact:
    result = artifacts.read(uri, **kw)
    assert isinstance(result, Artifact), result
    return result


def not_checked(uri: str, **kw: Any) -> str:
    result = artifacts.read(uri, **kw)
    assert isinstance(result, NotChecked), result
    return result.reason


def workload() -> gpufit.Workload:
    return gpufit.Workload("transformers", "text-generation", "float16", sequence_length=2048)


# ---- HTTP ------------------------------------------------------------------------------------

def test_a_truncated_13b_file_is_read_by_its_header_only(store: Store) -> None:
    raw = sh.header(LLAMA.tensors())
    store.files["/m/model.safetensors"] = (sh.truncated_file(LLAMA.tensors()), DECLARED)
    store.files["/m/config.json"] = (json.dumps(LLAMA.config()).encode(), None)
    art = read_ok(f"{store.url}/m/model.safetensors")
    assert art.size_bytes == DECLARED and art.config == LLAMA.config()
    [header] = art.headers
    assert header == gpufit.parse_header(raw)
    assert store.requests[:2] == [("/m/model.safetensors", "bytes=0-7"),
                                  ("/m/model.safetensors", f"bytes=8-{8 + len(raw) - 1}")]
    # the header, never the tensors
    assert store.sent == {"/m/model.safetensors": 8 + len(raw),
                          "/m/config.json": len(store.files["/m/config.json"][0])}
    est = art.estimate(workload())
    assert est == gpufit.estimate_from_headers([header], workload(), LLAMA.config())


def test_without_a_config_beside_it_the_header_still_counts(store: Store) -> None:
    store.files["/model.safetensors"] = (sh.truncated_file(LLAMA.tensors()), None)
    art = read_ok(f"{store.url}/model.safetensors")
    assert art.config is None and len(art.headers) == 1
    assert any("KV cache not counted" in n for n in art.estimate(workload()).notes)


def test_a_sharded_model_is_read_through_its_index(store: Store) -> None:
    tensors = LLAMA.tensors()
    half = len(tensors) // 2
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, part in zip(names, (tensors[:half], tensors[half:]), strict=True):
        store.files[f"/m/{name}"] = (sh.truncated_file(part), None)
    index = {"metadata": {}, "weight_map": {t: names[i >= half]
                                            for i, (t, _) in enumerate(tensors)}}
    store.files["/m/model.safetensors.index.json"] = (json.dumps(index).encode(), None)
    store.files["/m/config.json"] = (json.dumps(LLAMA.config()).encode(), None)
    art = read_ok(f"{store.url}/m/model.safetensors.index.json")
    assert sum(h.parameters for h in art.headers) == LLAMA.parameters
    assert art.config is not None


def test_a_server_that_ignores_ranges_is_read_no_further_than_needed(store: Store) -> None:
    store.ranges = False
    store.files["/model.safetensors"] = (sh.truncated_file(LLAMA.tensors(), data=bytes(10**6)),
                                         None)
    art = read_ok(f"{store.url}/model.safetensors")
    assert art.headers[0].parameters == LLAMA.parameters
    assert art.size_bytes == len(store.files["/model.safetensors"][0])


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "shorter than the 8-byte header length"),
    (b"\x01\x02\x03", "shorter than the 8-byte header length"),
    ((200 * 2**20).to_bytes(8, "little") + b"{}", "above the 100000000-byte limit"),
    ((100).to_bytes(8, "little") + b'{"w": ', "ends 6 bytes into its 100-byte header"),
    (sh.with_length(b"{not json}"), "the header is not JSON"),
    (sh.with_length(b'{"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 3]}}'),
     "span 3 bytes, but F16 x \\[2\\] takes 4"),
])
def test_a_file_that_is_no_usable_safetensors_file_is_not_checked_with_why(
        store: Store, content: bytes, reason: str) -> None:
    store.files["/x.safetensors"] = (content, None)
    assert re.search(reason, not_checked(f"{store.url}/x.safetensors"))


def test_the_header_limit_is_a_parameter(store: Store) -> None:
    store.files["/model.safetensors"] = (sh.truncated_file(LLAMA.tensors()), None)
    assert "above the 1000-byte limit" in not_checked(f"{store.url}/model.safetensors",
                                                      max_header_bytes=1000)


def test_missing_files_unreachable_hosts_and_slow_servers_are_not_checked(store: Store) -> None:
    assert not_checked(f"{store.url}/none.safetensors") == (
        f"{store.url}/none.safetensors answered HTTP 404")
    store.slow.add("/slow.safetensors")
    store.files["/slow.safetensors"] = (sh.truncated_file(LLAMA.tensors()), None)
    assert "no answer within 0.2 s" in not_checked(f"{store.url}/slow.safetensors",
                                                  timeout=0.2)
    assert "cannot read http://127.0.0.1:1/m.safetensors" in not_checked(
        "http://127.0.0.1:1/m.safetensors")
    # an S3-style error answer gives its code, and nothing else of what it said
    store.errors["/denied.safetensors"] = (403, b'<?xml version="1.0" encoding="UTF-8"?>\n'
                                           b"<Error><Code>AccessDenied</Code><Message>secret "
                                           b"detail</Message></Error>")
    assert not_checked(f"{store.url}/denied.safetensors") == (
        f"{store.url}/denied.safetensors answered HTTP 403 AccessDenied")
    store.errors["/html.safetensors"] = (500, b"<html>internal detail</html>")
    assert not_checked(f"{store.url}/html.safetensors").endswith("answered HTTP 500")


def test_link_local_hosts_are_refused_redirects_included(store: Store) -> None:
    metadata = "http://169.254.169.254/latest/model.safetensors"
    assert "169.254.169.254, a link-local address" in not_checked(metadata)
    store.redirects["/moved.safetensors"] = metadata
    assert "link-local" in not_checked(f"{store.url}/moved.safetensors")
    store.redirects["/ok.safetensors"] = f"{store.url}/real.safetensors"
    store.files["/real.safetensors"] = (sh.truncated_file(LLAMA.tensors()), None)
    assert read_ok(f"{store.url}/ok.safetensors").headers


def test_other_artifacts_are_known_by_their_size(store: Store) -> None:
    store.files["/model.pt"] = (bytes(5000), None)
    art = read_ok(f"{store.url}/model.pt")
    assert (art.headers, art.size_bytes) == ((), 5000)
    est = art.estimate(gpufit.Workload("torchscript", None, "float16"))
    assert est.source == "artifact-size" and est.weight_bytes == 2500


def test_pvc_and_file_uris_are_not_checked_and_say_why() -> None:
    assert "mounted into the pods only" in not_checked("pvc://models/bert")
    assert "on the node that runs the pod" in not_checked("file:///models/bert")
    result = artifacts.read("pvc://models/bert")
    assert isinstance(result, NotChecked)
    assert result.message == ("the GPU memory fit of pvc://models/bert was not checked: a "
                              "pvc:// volume is mounted into the pods only; the operator does "
                              "not mount it; the pods are placed as spec.gpu says")


# ---- archives --------------------------------------------------------------------------------

def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def truncated_tar(config: bytes, safetensors_start: bytes, declared: int) -> bytes:
    """A tar of config.json and a model.safetensors of ``declared`` bytes, cut after the
    latter's first bytes (what a streamed read sees of a 26 GB archive)."""
    pad = (-len(config)) % 512
    return (_member("config.json", len(config)) + config + bytes(pad)
            + _member("model.safetensors", declared) + safetensors_start)


def test_a_tar_gz_is_streamed_until_the_header_and_config_are_read(store: Store) -> None:
    config = json.dumps(LLAMA.config()).encode()
    start = sh.truncated_file(LLAMA.tensors(), data=bytes(4096))
    archive = gzip.compress(truncated_tar(config, start, 2 * LLAMA.parameters + len(start)))
    store.files["/llama.tar.gz"] = (archive, None)
    art = read_ok(f"{store.url}/llama.tar.gz")
    assert art.config == LLAMA.config() and art.size_bytes == len(archive)
    assert art.headers[0].parameters == LLAMA.parameters
    plain = truncated_tar(config, start, 2 * LLAMA.parameters + len(start))
    store.files["/llama.tar"] = (plain, None)
    assert read_ok(f"{store.url}/llama.tar").headers == art.headers


def test_the_model_stores_archives_are_read(store: Store, tmp_path: Path) -> None:
    small = sh.LlamaShape(64, 2, 4, 4, 128, 1000, 128)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(small.config()))
    (model / "tokenizer.json").write_text("{}")
    raw = sh.header(small.tensors(), "F32")
    (model / "model.safetensors").write_bytes(
        sh.with_length(raw) + bytes(4 * small.parameters))
    store.files["/small.tar.gz"] = (modelstores.tar_gz(model), None)
    art = read_ok(f"{store.url}/small.tar.gz")
    assert art.headers == (gpufit.parse_header(raw),)
    assert art.config == small.config()


def test_an_archive_whose_shards_lie_past_the_window_is_estimated_from_its_size(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "MAX_ARCHIVE_SCAN_BYTES", 2**16)
    tensors = LLAMA.tensors()
    first = sh.truncated_file(tensors[:10], data=b"")
    blob = (_member("model-00001-of-00002.safetensors", 2**20) + first
            + bytes(2**20 - len(first)) + bytes(2**18))
    store.files["/sharded.tar"] = (blob, None)
    art = read_ok(f"{store.url}/sharded.tar")
    assert art.headers == () and art.size_bytes == len(blob)
    assert "were not read" in art.notes[0]
    assert art.estimate(workload()).source == "artifact-size"


def test_an_archive_that_is_not_one_is_not_checked(store: Store) -> None:
    store.files["/bad.tar.gz"] = (b"not gzip at all" * 100, None)
    assert "is not a gzip stream" in not_checked(f"{store.url}/bad.tar.gz")
    store.files["/bad.tar"] = (bytes(range(256)) * 4, None)
    assert "checksum does not match" in not_checked(f"{store.url}/bad.tar")


# ---- S3 --------------------------------------------------------------------------------------

def test_sigv4_signs_amazons_own_example() -> None:
    """Amazon's documented GET Object example (bucket examplebucket, Range bytes=0-9)."""
    creds = S3Access("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = artifacts.sigv4_headers(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", {"Range": "bytes=0-9"}, creds,
        dt.datetime(2013, 5, 24, tzinfo=dt.UTC))
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert headers["x-amz-date"] == "20130524T000000Z"


def test_sigv4_agrees_with_botocore_on_a_listing_with_a_session_token() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = S3Access("AKID", "secret/key", "session+token", "eu-west-1", "http://10.0.0.5:9000")
    url = artifacts.s3_url("models", "", creds, "list-type=2&prefix=llama%2013b%2F")
    request = AWSRequest(method="GET", url=url, headers={})
    signer = S3SigV4Auth(Credentials("AKID", "secret/key", "session+token"), "s3", "eu-west-1")
    signer.add_auth(request)
    when = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.UTC)
    ours = artifacts.sigv4_headers("GET", url, {}, creds, when)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-security-token"] == "session+token"


def test_s3_urls_are_path_style_on_an_endpoint_and_virtual_hosted_on_amazon() -> None:
    local = S3Access(endpoint_url="http://10.96.0.81")
    assert artifacts.s3_url("b", "m/a b.safetensors", local) == (
        "http://10.96.0.81/b/m/a%20b.safetensors")
    aws = S3Access("k", "s", region="eu-west-1")
    assert artifacts.s3_url("b", "m/x", aws) == "https://b.s3.eu-west-1.amazonaws.com/m/x"
    assert artifacts.s3_url("my.bucket", "x", aws) == (
        "https://s3.eu-west-1.amazonaws.com/my.bucket/x")


def test_s3_access_follows_the_pulls_environment_convention() -> None:
    access = S3Access.from_env(modelstores.S3_CREDENTIALS)
    assert access == S3Access("local", "local-secret", None, "us-east-1", "http://10.96.0.81")
    assert access.signs
    anonymous = S3Access.from_env({"AWS_ENDPOINT_URL_S3": "http://minio:9000/"})
    assert (anonymous.signs, anonymous.endpoint_url) == (False, "http://minio:9000")


@pytest.fixture
def s3() -> Iterator[tuple[Any, S3Access]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    access = S3Access("test", "test", None, "us-east-1", f"http://{host}:{port}")
    client = boto3.client("s3", endpoint_url=access.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="models")
    try:
        yield client, access
    finally:
        server.stop()


def test_s3_prefixes_objects_and_archives(s3: tuple[Any, S3Access]) -> None:
    client, access = s3
    put = client.put_object
    config = json.dumps(LLAMA.config()).encode()
    put(Bucket="models", Key="llama/13b/model.safetensors", Body=sh.truncated_file(LLAMA.tensors()))
    put(Bucket="models", Key="llama/13b/config.json", Body=config)
    put(Bucket="models", Key="llama/13b/tokenizer/vocab.json", Body=b"{}")
    for uri in ("s3://models/llama/13b/", "s3://models/llama/13b",
                "s3://models/llama/13b/model.safetensors"):
        art = read_ok(uri, s3=access)
        assert art.headers[0].parameters == LLAMA.parameters, uri
        assert art.config == LLAMA.config(), uri
    start = sh.truncated_file(LLAMA.tensors(), data=bytes(100))
    put(Bucket="models", Key="packed/llama.tar.gz",
        Body=gzip.compress(truncated_tar(config, start, 2 * LLAMA.parameters)))
    for uri in ("s3://models/packed/llama.tar.gz", "s3://models/packed/"):
        assert read_ok(uri, s3=access).headers[0].parameters == LLAMA.parameters, uri
    assert "no objects found" in not_checked("s3://models/nothing/", s3=access)
    assert "no such bucket" in not_checked("s3://absent/x/", s3=access)


def test_s3_without_keys_goes_unsigned(s3: tuple[Any, S3Access]) -> None:
    client, access = s3
    client.put_object(Bucket="models", Key="m/model.safetensors",
                      Body=sh.truncated_file(LLAMA.tensors()), ACL="public-read")
    client.put_object(Bucket="models", Key="private/model.safetensors",
                      Body=sh.truncated_file(LLAMA.tensors()))
    unsigned = S3Access(endpoint_url=access.endpoint_url)
    assert read_ok("s3://models/m/model.safetensors", s3=unsigned).headers
    assert not_checked("s3://models/private/model.safetensors", s3=unsigned).endswith(
        "/models/private/model.safetensors answered HTTP 403")


def test_reading_never_raises_whatever_comes_back(store: Store) -> None:
    for path, content in (("/a.safetensors", b"\xff" * 64),
                          ("/b.tar", b"\x00" * 1024), ("/c.safetensors.index.json", b"[]")):
        store.files[path] = (content, None)
        result = artifacts.read(f"{store.url}{path}")
        assert isinstance(result, NotChecked | Artifact)
    assert isinstance(artifacts.read(f"{store.url}/c.safetensors.index.json"), NotChecked)
    assert "'ftp' is not one the operator reads" in not_checked("ftp://host/x")
