"""Token rotation without a restart, and failing closed when no token is left.

One server (REST, gRPC and the OpenAI-compatible API) reads its tokens from a directory
written the way the kubelet writes a mounted Secret: the keys are symlinks into a hidden,
timestamped directory that `..data` points at, and an update swaps `..data` in one rename.
Every front end is checked with its own unmodified client.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from model_server import auth as auth_module
from model_server import cli
from model_server.app import create_app
from model_server.auth import ConfigError, TokenAuth, read_tokens
from model_server.settings import Settings
from msv_contract import env

from .conftest import UvicornThread
from .doubles import GenerateBackend

OLD, NEW = "old-token-1", "new-token-2"
RELOAD_S = 0.05


class KubeletSecret:
    """A Secret volume as the kubelet's atomic writer keeps it up to date."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._serial = itertools.count()
        path.mkdir(parents=True)

    def write(self, data: dict[str, str]) -> None:
        """Replace the Secret's keys by `data` as one atomic update."""
        old = os.readlink(self.path / "..data") if (self.path / "..data").is_symlink() else None
        stamp = f"..2026_01_01_00_00_{next(self._serial):02d}"
        (self.path / stamp).mkdir()
        for key, value in data.items():
            (self.path / stamp / key).write_text(value)
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(stamp)
        tmp.rename(self.path / "..data")  # the one atomic switch
        for key in data:
            link = self.path / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for entry in self.path.iterdir():  # keys the update dropped
            if entry.is_symlink() and not entry.name.startswith(".") and not entry.exists():
                entry.unlink()
        if old is not None:
            for f in (self.path / old).iterdir():
                f.unlink()
            (self.path / old).rmdir()


class Server:
    def __init__(self, thread: UvicornThread) -> None:
        self.base = f"http://{thread.url}"
        self.grpc_url = f"127.0.0.1:{thread.server.config.app.state.grpc_port}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, KubeletSecret]]:
    secret = KubeletSecret(tmp_path / "tokens")
    secret.write({"token": OLD})
    settings = Settings(
        model_name="gpt", grpc_port=0, auth_tokens=secret.path, auth_reload_seconds=RELOAD_S
    )
    app = create_app(settings, registry=CollectorRegistry(), backend=GenerateBackend())
    with UvicornThread(app) as thread:
        server = Server(thread)
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "model did not become ready"
            time.sleep(0.02)
        yield server, secret


def rest(server: Server, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.base}/v2/models/gpt", headers=headers, timeout=5).status_code


def grpc_code(server: Server, token: str | None) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        headers = {"authorization": f"Bearer {token}"} if token else None
        client.get_model_metadata("gpt", headers=headers)
        return "OK"
    except InferenceServerException as exc:
        return str(exc.status())
    finally:
        client.close()


def grpc_ready(server: Server) -> bool:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return bool(client.is_server_ready())
    finally:
        client.close()


def openai_outcome(server: Server, token: str) -> str:
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=token, max_retries=0)
    try:
        done = client.completions.create(model="gpt", prompt="a b", max_tokens=2)
        return done.choices[0].text
    except openai.AuthenticationError as exc:
        assert exc.status_code == 401
        return "401"
    finally:
        client.close()


def accepted_everywhere(server: Server, token: str) -> bool:
    return (
        rest(server, token) == 200
        and grpc_code(server, token) == "OK"
        and openai_outcome(server, token) == "a b "
    )


def refused_everywhere(server: Server, token: str | None) -> bool:
    return (
        rest(server, token) == 401
        and grpc_code(server, token) == "StatusCode.UNAUTHENTICATED"
        and openai_outcome(server, token or "none") == "401"
    )


def eventually(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(RELOAD_S)


def test_rotation_takes_effect_on_every_front_end_without_a_restart(
    served: tuple[Server, KubeletSecret],
) -> None:
    server, secret = served
    assert accepted_everywhere(server, OLD)
    assert refused_everywhere(server, NEW)
    assert refused_everywhere(server, None)
    secret.write({"token": NEW})
    eventually("the new token to work", lambda: rest(server, NEW) == 200)
    assert accepted_everywhere(server, NEW)
    assert refused_everywhere(server, OLD)  # revoked: gone from the Secret
    # a second key is a second accepted token; removing it revokes it again
    secret.write({"token": NEW, "ci": "ci-token"})
    eventually("the added key to work", lambda: rest(server, "ci-token") == 200)
    assert accepted_everywhere(server, NEW)
    secret.write({"ci": "ci-token"})
    eventually("the dropped key to be refused", lambda: rest(server, NEW) == 401)
    assert refused_everywhere(server, NEW) and accepted_everywhere(server, "ci-token")


@pytest.mark.parametrize("emptied", [{}, {"token": "\n  \n"}], ids=["no-keys", "blank-key"])
def test_a_secret_left_without_tokens_fails_closed_until_one_returns(
    served: tuple[Server, KubeletSecret], emptied: dict[str, str]
) -> None:
    server, secret = served
    secret.write(emptied)
    ready = f"{server.base}/v2/health/ready"
    eventually("not ready", lambda: httpx.get(ready).status_code == 503)
    body = httpx.get(ready).json()
    assert "no bearer token is accepted" in body["error"], body
    assert str(secret.path) in body["error"], body
    assert httpx.get(f"{server.base}/v2/health/live").status_code == 200  # alive: no restart
    assert not grpc_ready(server)
    for token in (OLD, None, ""):
        assert refused_everywhere(server, token), token
    assert httpx.get(f"{server.base}/metrics").status_code == 401
    secret.write({"token": NEW})
    eventually("ready again", lambda: httpx.get(ready).status_code == 200)
    assert grpc_ready(server)
    assert accepted_everywhere(server, NEW) and refused_everywhere(server, OLD)


def test_update_logs_changes_never_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(OLD)
    auth = TokenAuth.from_path(path)
    assert not auth.reload()  # unchanged
    path.write_text(f"{OLD}\n{NEW}\n")
    with caplog.at_level("INFO", logger="model_server.auth"):
        assert auth.reload()
        path.write_text("")
        assert auth.reload()
    assert not auth.usable and auth.problem is not None
    assert "holds no token" in auth.problem
    assert not auth.valid(f"Bearer {OLD}") and not auth.valid(f"Bearer {NEW}")
    text = caplog.text
    assert "2 accepted" in text and "every request but health is refused" in text
    assert OLD not in text and NEW not in text


class Scripted(TokenAuth):
    """TokenAuth whose reads say what the test scripts, recording what it applied."""

    def __init__(self, reads: list[tuple[tuple[bytes, ...], str | None]]) -> None:
        super().__init__([OLD.encode()])
        self.reads, self.calls, self.applied = reads, 0, []

    def read(self) -> tuple[tuple[bytes, ...], str | None]:
        self.calls += 1
        return self.reads[min(self.calls, len(self.reads)) - 1]

    def update(self, tokens: tuple[bytes, ...], problem: str | None = None) -> bool:
        self.applied.append(tokens)
        return super().update(tokens, problem)


def test_a_read_in_the_middle_of_a_swap_does_not_fail_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty read is confirmed once before every request is refused."""
    monkeypatch.setattr(auth_module, "RECHECK_S", 0.0)
    auth = Scripted([((), "no token"), ((NEW.encode(),), None)])

    async def run() -> None:
        task = asyncio.create_task(auth_module.watch(auth, 0.001))
        while auth.calls < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert auth.applied and all(auth.applied), "never applied an empty read"
    assert auth.valid(f"Bearer {NEW}") and not auth.valid(f"Bearer {OLD}")
    confirmed = Scripted([((), "no token")])  # empty twice in a row: fail closed

    async def run_confirmed() -> None:
        task = asyncio.create_task(auth_module.watch(confirmed, 0.001))
        while not confirmed.applied:
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run_confirmed())
    assert confirmed.applied[0] == () and not confirmed.usable
    assert confirmed.calls >= 2 and not confirmed.valid(f"Bearer {OLD}")


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (None, env.AUTH_SECRET_MISSING),  # the path does not exist
        ({}, env.AUTH_SECRET_MISSING),  # an optional Secret volume of a missing Secret
        ({"token": ""}, env.NO_TOKENS),
        ({"a": " \n", "b": "\n"}, env.NO_TOKENS),
    ],
)
def test_startup_errors_carry_the_reason_the_operator_reports(
    tmp_path: Path, files: dict[str, str] | None, reason: str
) -> None:
    path = tmp_path / "secret"
    if files is not None:
        path.mkdir()
        for key, value in files.items():
            (path / key).write_text(value)
    with pytest.raises(ConfigError) as info:
        read_tokens(path)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{reason}: ") and str(path) in str(info.value)


def test_an_empty_security_setting_is_refused_not_read_as_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--auth-tokens", "--tls-cert-file"):
        code = cli.main(["serve", "--model-dir", str(tmp_path), flag, ""])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "must not be empty" in err and flag.lstrip("-").replace("-", "_").upper() in err
