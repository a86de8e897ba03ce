"""Bearer-token authentication and TLS on the REST front end, with off-the-shelf clients."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from model_server import cli
from model_server.app import create_app
from model_server.auth import ConfigError, TokenAuth, read_tokens
from model_server.http_server import uvicorn_options
from model_server.settings import Settings

from .certs import write_tls_secret
from .conftest import UvicornThread, serve_app
from .doubles import EchoBackend

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ab"]}
BODY = orjson.dumps({"inputs": [X, TEXT]})
TOKEN = "s3cret-token"


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """A Secret as the kubelet mounts it: keys are symlinks into a hidden ..data directory."""
    secret = tmp_path / "secret"
    data = secret / "..2026_01_01"
    data.mkdir(parents=True)
    (data / "token").write_text(TOKEN + "\n")
    (data / "other").write_text("second-token")
    (secret / "..data").symlink_to(data.name)
    for key in ("token", "other"):
        (secret / key).symlink_to(f"..data/{key}")
    return secret


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("fast", [True, False])
def test_rest_needs_a_token_except_for_health(token_dir: Path, fast: bool) -> None:
    with serve_app(auth_tokens=token_dir, infer_fast_path=fast, ready=False) as (client, _, reg):
        deadline = time.monotonic() + 10
        while client.get("/v2/health/ready").status_code != 200:  # probes need no token
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/v2/health/live").status_code == 200
        path = "/v2/models/echo/infer"
        missing = client.post(path, content=BODY)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="model-server"'
        assert "Authorization: Bearer" in missing.json()["error"]
        wrong = client.post(path, content=BODY, headers=_bearer("guess"))
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = client.post(path, content=BODY, headers={"Authorization": "Basic " + TOKEN})
        assert basic.status_code == 401
        assert client.post(path, content=BODY, headers=_bearer(TOKEN)).status_code == 200
        assert client.post(path, content=BODY, headers=_bearer("second-token")).status_code == 200
        # every other route too: metadata, generate, unknown paths, metrics
        for method, route in (
            ("GET", "/v2"),
            ("GET", "/v2/models/echo"),
            ("GET", "/v2/models/echo/ready"),
            ("POST", "/v2/models/echo/generate"),
            ("GET", "/no/such/route"),
            ("GET", "/metrics"),
        ):
            assert client.request(method, route).status_code == 401, route
        assert client.get("/metrics", headers=_bearer(TOKEN)).status_code == 200
        # refused requests are not inference: only the two good ones were counted
        labels = {"model": "echo", "variant": "int8", "endpoint": "infer"}
        assert reg.get_sample_value("model_server_requests_total", {**labels, "status": "200"}) == 2
        assert (
            reg.get_sample_value("model_server_requests_total", {**labels, "status": "401"}) is None
        )


def test_metrics_can_stay_open(token_dir: Path) -> None:
    with serve_app(auth_tokens=token_dir, auth_metrics=False) as (client, _, _):
        assert client.get("/metrics").status_code == 200
        assert client.get("/v2").status_code == 401


def test_token_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("\nalpha\n  beta  \n")
    assert read_tokens(path) == [b"alpha", b"beta"]
    auth = TokenAuth(read_tokens(path))
    assert auth.valid(b"Bearer beta") and auth.valid("bearer alpha")
    assert not auth.valid(b"Bearer alph") and not auth.valid(b"Bearer") and not auth.valid(None)


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_unusable_token_path_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        read_tokens(path)


def test_serve_stops_with_one_line_on_a_bad_token_or_tls_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = write_tls_secret(tmp_path / "tls")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--auth-tokens", str(tmp_path / "missing")], "cannot read auth tokens"),
        (["--auth-tokens", str(tmp_path / "empty")], "holds no token"),
        (
            [
                "--tls-cert-file",
                str(tmp_path / "no.crt"),
                "--tls-key-file",
                str(secret / "tls.key"),
            ],
            "cannot read TLS certificate",
        ),
        (
            ["--tls-cert-file", str(secret / "tls.crt"), "--tls-key-file", str(secret / "ca.crt")],
            "do not load as a pair",
        ),
        (["--tls-cert-file", str(secret / "tls.crt")], "must be set together"),
    ]
    for flags, message in cases:
        code = cli.main(["serve", "--model-dir", str(tmp_path), *flags])
        err = capsys.readouterr().err
        assert code == 2, (flags, err)
        assert message in err, (flags, err)
        if "together" not in message:
            assert err.count("\n") == 1, err  # one line


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UvicornThread, Path]]:
    base = tmp_path_factory.mktemp("tls")
    secret = write_tls_secret(base / "secret")
    (base / "tokens").write_text(TOKEN)
    settings = Settings(
        model_name="echo",
        auth_tokens=base / "tokens",
        tls_cert_file=secret / "tls.crt",
        tls_key_file=secret / "tls.key",
    )
    app = create_app(settings, registry=CollectorRegistry(), backend=EchoBackend())
    with UvicornThread(app, **uvicorn_options(settings)) as server:
        yield server, secret


def test_tritonclient_http_over_tls_with_a_token(tls_server: tuple[UvicornThread, Path]) -> None:
    server, secret = tls_server
    ca = str(secret / "ca.crt")
    client = httpclient.InferenceServerClient(server.url, ssl=True, ssl_options={"ca_certs": ca})
    try:
        deadline = time.monotonic() + 10
        while not client.is_server_ready():  # health: no token needed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inputs = [
            httpclient.InferInput("x", [2, 4], "FP32"),
            httpclient.InferInput("text", [2], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
        with pytest.raises(InferenceServerException, match="authentication required"):
            client.infer("echo", inputs)
        with pytest.raises(InferenceServerException, match="invalid bearer token"):
            client.infer("echo", inputs, headers=_bearer("nope"))
        result = client.infer("echo", inputs, headers=_bearer(TOKEN))
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    finally:
        client.close()


def test_tls_server_refuses_plain_http_and_untrusted_clients(
    tls_server: tuple[UvicornThread, Path],
) -> None:
    server, secret = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{server.url}/v2/health/live", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{server.url}/v2/health/live", timeout=5)  # system CAs only
    ctx = ssl.create_default_context(cafile=str(secret / "ca.crt"))
    assert (
        httpx.get(f"https://{server.url}/v2/health/live", verify=ctx, timeout=5).status_code == 200
    )
