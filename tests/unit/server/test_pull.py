"""`model-server pull`: file://, http:// (local server), s3:// (moto on loopback), atomicity."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from model_server.cli import main as cli_main
from model_server.pull import MARKER, PullError, pull, pull_report, read_marker
from msv_contract import env as contract


def make_model_dir(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    return src


def make_tarball(root: Path) -> Path:
    src = make_model_dir(root)
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for path in src.rglob("*"):
            tf.add(path, arcname=str(path.relative_to(src)))
    return archive


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_directory(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path)
    dest = tmp_path / "out" / "model"
    pull(src.as_uri(), dest)
    assert (dest / "config.json").read_text() == '{"a": 1}'
    assert (dest / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert not list(dest.parent.glob(".pull-*"))


def test_file_archive_with_checksum_is_unpacked(tmp_path: Path) -> None:
    archive = make_tarball(tmp_path)
    dest = tmp_path / "model"
    pull(archive.as_uri(), dest, sha256=sha(archive))
    assert (dest / "config.json").is_file()
    assert (dest / "sub" / "weights.bin").is_file()
    assert not (dest / "model.tar.gz").exists()


def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    archive = make_tarball(tmp_path)
    dest = tmp_path / "model"
    with pytest.raises(PullError, match="checksum mismatch"):
        pull(archive.as_uri(), dest, sha256="0" * 64)
    assert not dest.exists()
    assert not list(tmp_path.glob(".pull-*"))


def test_cli_reports_failure_with_exit_code(tmp_path: Path) -> None:
    archive = make_tarball(tmp_path)
    dest = tmp_path / "model"
    assert cli_main(["pull", archive.as_uri(), str(dest), "--sha256", "ab" * 32]) == 1
    assert not dest.exists()
    assert cli_main(["pull", archive.as_uri(), str(dest), "--sha256", sha(archive)]) == 0
    assert (dest / "config.json").is_file()


def test_into_empty_volume_directory_and_rerun_is_noop(tmp_path: Path) -> None:
    archive = make_tarball(tmp_path)
    volume = tmp_path / "mnt"
    volume.mkdir()  # like an emptyDir mount point that cannot be replaced
    pull(archive.as_uri(), volume, sha256=sha(archive))
    assert (volume / "config.json").is_file()
    assert (volume / MARKER).is_file()
    assert not list(volume.glob(".pull-*"))
    pull(archive.as_uri(), volume, sha256=sha(archive))  # same pull again: nothing to do
    other = make_model_dir(tmp_path / "x")
    with pytest.raises(PullError, match="not empty"):
        pull(other.as_uri(), volume)
    pull(other.as_uri(), volume, force=True)
    assert (volume / "sub" / "weights.bin").is_file()


def test_archive_member_escaping_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(PullError, match="cannot unpack"):
        pull(archive.as_uri(), tmp_path / "model")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "model").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="unsupported URI scheme"):
        pull("ftp://x/y", tmp_path / "m")
    with pytest.raises(PullError, match="64 hexadecimal"):
        pull((tmp_path).as_uri(), tmp_path / "m", sha256="xyz")
    with pytest.raises(PullError, match="no such file"):
        pull((tmp_path / "absent").as_uri(), tmp_path / "m")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_archive_and_single_file(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    archive = make_tarball(tmp_path)
    (root / "model.tar.gz").write_bytes(archive.read_bytes())
    (root / "model.pt").write_bytes(b"torchscript-bytes")
    pull(f"{url}/model.tar.gz", tmp_path / "a", sha256=sha(archive))
    assert (tmp_path / "a" / "sub" / "weights.bin").is_file()
    pull(f"{url}/model.pt", tmp_path / "b")
    assert (tmp_path / "b" / "model.pt").read_bytes() == b"torchscript-bytes"
    with pytest.raises(PullError, match="HTTP 404"):
        pull(f"{url}/missing.bin", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(PullError, match="checksum mismatch"):
        pull(f"{url}/model.pt", tmp_path / "d", sha256="1" * 64)
    assert not (tmp_path / "d").exists()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket="models")
    try:
        yield client
    finally:
        server.stop()


def test_s3_prefix_and_object(tmp_path: Path, s3: object) -> None:
    client: object = s3
    put = client.put_object  # type: ignore[attr-defined]
    put(Bucket="models", Key="bert/v1/config.json", Body=b"{}")
    put(Bucket="models", Key="bert/v1/tok/vocab.txt", Body=b"a\nb\n")
    archive = make_tarball(tmp_path)
    put(Bucket="models", Key="packed/model.tar.gz", Body=archive.read_bytes())

    pull("s3://models/bert/v1", tmp_path / "p")
    assert (tmp_path / "p" / "config.json").read_bytes() == b"{}"
    assert (tmp_path / "p" / "tok" / "vocab.txt").read_bytes() == b"a\nb\n"

    pull("s3://models/packed/model.tar.gz", tmp_path / "o", sha256=sha(archive))
    assert (tmp_path / "o" / "sub" / "weights.bin").is_file()

    with pytest.raises(PullError, match="checksum mismatch"):
        pull("s3://models/packed/model.tar.gz", tmp_path / "bad", sha256="2" * 64)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(PullError, match="no objects"):
        pull("s3://models/nothing-here/", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def _tar_with(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1
            ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("member", "message"), [
    (_member("../up.txt"), "escapes"),
    (_member("/etc/passwd"), "escapes"),
    (_member("dev", tarfile.CHRTYPE), "not a regular file"),
    (_member("link", tarfile.SYMTYPE, "../../etc/passwd"), "points outside"),
    (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "points outside"),
])
def test_member_check_for_interpreters_without_tar_filters(
        tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    # Python < 3.11.4 (Debian bookworm's 3.11.2 in the local images) has no "data" filter.
    from model_server.pull import checked_tar_members

    root = (tmp_path / "dest").resolve()
    root.mkdir()
    with tarfile.open(_tar_with(tmp_path, member)) as tf, pytest.raises(PullError, match=message):
        checked_tar_members(tf, root)


def test_member_check_keeps_a_normal_model_and_strips_special_bits(tmp_path: Path) -> None:
    from model_server.pull import checked_tar_members

    root = (tmp_path / "dest").resolve()
    root.mkdir()
    suid = _member("bin/tool")
    suid.mode = 0o4755
    archive = _tar_with(tmp_path, _member("config.json"), suid,
                        _member("weights", tarfile.SYMTYPE, "bin/tool"))
    with tarfile.open(archive) as tf:
        members = checked_tar_members(tf, root)
        assert [m.name for m in members] == ["config.json", "bin/tool", "weights"]
        assert members[1].mode == 0o755
        tf.extractall(root, members=members)
    assert (root / "config.json").read_bytes() == b"x"


def test_marker_and_report_say_what_the_pull_took(tmp_path: Path) -> None:
    archive = make_tarball(tmp_path)
    volume = tmp_path / "mnt"
    volume.mkdir()
    first = pull_report(archive.as_uri(), volume, sha256=sha(archive))
    assert first.path == volume and not first.cache_hit
    assert first.bytes == archive.stat().st_size  # the archive fetched, before unpacking
    assert first.seconds >= 0
    marker = read_marker(volume)
    assert marker is not None
    assert {k: marker[k] for k in ("uri", "sha256", "bytes", "cacheHit")} == {
        "uri": archive.as_uri(), "sha256": sha(archive), "bytes": first.bytes, "cacheHit": False}
    again = pull_report(archive.as_uri(), volume, sha256=sha(archive))  # e.g. a pod restart
    assert again.cache_hit and again.bytes == 0
    assert read_marker(volume)["cacheHit"] is True  # type: ignore[index]
    assert again.report() == {"bytes": 0, "seconds": round(again.seconds, 3), "cacheHit": True,
                              "source": "direct", "cacheBytes": 0}
    assert not list(volume.glob(".pull-*"))


def test_a_marker_without_timings_still_counts_as_pulled(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path)
    volume = tmp_path / "mnt"
    volume.mkdir()
    pull(src.as_uri(), volume)
    (volume / MARKER).write_text(json.dumps({"uri": src.as_uri(), "sha256": None}))  # older
    assert pull_report(src.as_uri(), volume).cache_hit


def test_cli_writes_the_report_as_its_termination_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tarball(tmp_path)
    tlog = tmp_path / "termination-log"
    tlog.touch()
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(tlog))
    assert cli_main(["pull", archive.as_uri(), str(tmp_path / "model")]) == 0
    report = json.loads(tlog.read_text())
    assert set(report) == {contract.PULL_BYTES, contract.PULL_SECONDS, contract.PULL_CACHE_HIT,
                           contract.PULL_SOURCE, contract.PULL_CACHE_BYTES}
    assert report[contract.PULL_BYTES] == archive.stat().st_size
    assert report[contract.PULL_CACHE_HIT] is False
