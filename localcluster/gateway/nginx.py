"""The data plane's nginx masters as child processes: start, apply a configuration, stop.

``DataPlane`` runs the two tiers ``render`` describes: the edge (its configuration never
changes while it runs) and the routing tier (``apply`` on every change); it is alive while
both masters are. ``Nginx`` is one master: ``Nginx.start(text)`` writes the first
configuration and runs ``nginx`` in the foreground (``daemon off`` is in the rendered text),
its error log on a pipe this module reads: every line goes on to our stderr and the last ones
are kept for error messages.
``Nginx.apply(text)`` does nothing when the text is what nginx already serves; otherwise it
writes the candidate beside the live file, has ``nginx -t`` check it (a refused text never
replaces the live one), renames it over the live file (atomic), sends the master SIGHUP and
waits until the status server's ``/msv-config`` answers the new text's digest, i.e. the new
workers serve it. A reload the master refuses (a port it cannot bind, ...) keeps the old
workers: ``apply`` then returns nginx's message and does not try the same text again.
``Nginx.stub_status`` and ``Nginx.budget_counters`` read a master's status server (nginx's
counters; the routing tier's retry budget counters).
Used by ``controller`` and by tests/e2e/test_gateway_nginx.py (real nginx on loopback).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localcluster.gateway.render import BUDGET_STATUS_PATH, CONFIG_DIGEST, Options, edge_config

INSTALL_HINT = "apt-get install nginx (Debian's package; scripts/node-packages installs it)"


_PREFIX = re.compile(r"^\S+ \S+ (\[\w+\]) \d+#\d+: (\*\d+ )?")


def _clean(line: str) -> str:
    """An error-log line without its time stamp and pids."""
    return _PREFIX.sub(r"\1 ", line.strip())


class NginxError(RuntimeError):
    """nginx is missing, would not start, or died."""


def find_binary() -> str:
    """The nginx binary (PATH, then Debian's /usr/sbin), or NginxError saying how to get it."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                      else None)
    if not found:
        raise NginxError(f"nginx is not installed: {INSTALL_HINT}")
    return found


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Applied:
    changed: bool
    """True when nginx now serves a new text."""
    error: str = ""
    """nginx's message when it refused the text ("" = none)."""


class Nginx:
    """One nginx master serving ``conf_dir/nginx.conf`` with its files under ``runtime_dir``."""

    def __init__(self, name: str, conf_dir: Path, runtime_dir: Path, status_address: str,
                 binary: str | None = None, log: Callable[[str], None] | None = None,
                 reload_timeout: float = 10.0) -> None:
        self.name = name
        self.binary = binary or find_binary()
        self.conf_dir, self.runtime_dir = Path(conf_dir), Path(runtime_dir)
        self.conf = self.conf_dir / f"{name}.conf"
        self.status_url = f"http://{status_address}"
        self.reload_timeout = reload_timeout
        self._log = log or (lambda line: print(f"nginx {name}: {line}", file=sys.stderr,
                                                flush=True))
        self._lines: collections.deque[str] = collections.deque(maxlen=40)
        self._lines_seen = 0
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.serving = ""  # digest of the text the workers serve
        self.refused = ""  # digest of the last text nginx refused (not retried)
        self.reloads = 0
        self.reload_errors = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, text: str, timeout: float = 10.0) -> None:
        """Check ``text``, write it and start the master; wait until it serves it."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        final, dig = self._final(text)
        error = self._write_checked(final)
        if error:
            raise NginxError(f"nginx refused the first configuration: {error}")
        self.proc = subprocess.Popen(
            [self.binary, "-p", f"{self.runtime_dir}/", "-e", "stderr", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, name="nginx-log", daemon=True).start()
        if not self._wait_serving(dig, timeout):
            self.stop()
            raise NginxError("nginx did not start: " + self._recent(0))
        self.serving = dig

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float = 10.0) -> None:
        """SIGQUIT (finish in-flight requests), then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- applying -------------------------------------------------------------------------

    def apply(self, text: str) -> Applied:
        """Serve ``text`` (see the module docstring)."""
        final, dig = self._final(text)
        if dig == self.serving or dig == self.refused:
            return Applied(False, "" if dig == self.serving else self.last_error)
        if not self.alive():
            raise NginxError(f"nginx is not running (exit code {self.exit_code()})")
        error = self._write_checked(final)
        if not error:
            mark = self._lines_seen
            assert self.proc is not None
            old = self.workers()
            self.proc.send_signal(signal.SIGHUP)
            if self._wait_serving(dig, self.reload_timeout, mark) and self._wait_retired(old):
                self.serving, self.refused, self.last_error = dig, "", ""
                self.reloads += 1
                return Applied(True)
            error = "the reload did not take effect: " + self._recent(mark)
        self.refused, self.last_error = dig, error
        self.reload_errors += 1
        return Applied(False, error)

    last_error = ""

    def _final(self, text: str) -> tuple[str, str]:
        dig = digest(text)
        return text.replace(CONFIG_DIGEST, dig), dig

    def _write_checked(self, final: str) -> str:
        """Write ``final`` as a candidate, ``nginx -t`` it, move it over the live file.
        Returns nginx's message when it refuses the text (the live file is kept)."""
        candidate = self.conf_dir / f"{self.name}.conf.candidate"
        with open(candidate, "w") as f:
            f.write(final)
            f.flush()
            os.fsync(f.fileno())
        proc = subprocess.run(
            [self.binary, "-t", "-q", "-p", f"{self.runtime_dir}/", "-e", "stderr",
             "-c", str(candidate)],
            capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "[emerg]" in ln or "[alert]" in ln]
            message = " ".join(map(_clean, lines or proc.stderr.splitlines()[-3:])).strip()
            return message.replace(str(candidate), self.conf.name) or f"exit {proc.returncode}"
        os.replace(candidate, self.conf)
        return ""

    def workers(self) -> dict[int, str]:
        """The master's worker processes: pid -> title (``nginx: worker process``, or ``...
        is shutting down`` for an old one finishing its requests)."""
        if self.proc is None:
            return {}
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) != self.proc.pid:
                    continue
                title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            out[int(stat.parent.name)] = title.decode(errors="replace").strip()
        return out

    def _wait_retired(self, old: dict[int, str]) -> bool:
        """Until none of the ``old`` workers takes new requests (each has exited or is
        finishing in-flight ones): before that one could still answer with the old config."""
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            now = self.workers()
            if all(pid not in now or "shutting down" in now[pid] for pid in old):
                return True
            time.sleep(0.02)
        return False

    def _wait_serving(self, dig: str, timeout: float, mark: int | None = None) -> bool:
        """Until the workers answer ``dig``; False when nginx died, logged an emergency after
        line ``mark`` (a reload it gave up) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if mark is not None and self._emergency_since(mark):
                time.sleep(0.2)  # the rest of its message
                return False
            try:
                with urllib.request.urlopen(self.status_url + "/msv-config", timeout=1) as r:
                    if r.read().decode() == dig:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        return False

    # -- the error log --------------------------------------------------------------------

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            with self._lock:
                self._lines.append(line)
                self._lines_seen += 1
            self._log(line)

    def _emergency_since(self, since: int) -> bool:
        with self._lock:
            new = list(self._lines)[-(self._lines_seen - since):] \
                if self._lines_seen > since else []
        return any("[emerg]" in ln for ln in new)

    def _recent(self, since: int) -> str:
        """nginx's error lines logged after line number ``since`` (emerg/alert first)."""
        with self._lock:
            new = list(self._lines)[-max(0, self._lines_seen - since):] \
                if self._lines_seen > since else []
        bad = [ln for ln in new if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln]
        return " ".join(map(_clean, (bad or new)[-3:])) or "no message from nginx"

    def stub_status(self) -> dict[str, int]:
        """nginx's ``stub_status`` counters (active, accepts, handled, requests, ...)."""
        with urllib.request.urlopen(self.status_url + "/stub_status", timeout=2) as r:
            text = r.read().decode()
        lines = text.splitlines()
        out = {"active": int(lines[0].split(":")[1])}
        accepts, handled, requests = (int(x) for x in lines[2].split())
        out.update(accepts=accepts, handled=handled, requests=requests)
        for k, v in zip(lines[3].split()[::2], lines[3].split()[1::2], strict=True):
            out[k.rstrip(":").lower()] = int(v)
        return out

    def budget_counters(self) -> dict[str, dict[str, int]]:
        """The routing tier's retry budget counters: ``namespace/name`` of each backend
        Service -> ``requests``, ``retries_allowed``, ``retries_rejected`` (since nginx
        started; reloads keep them)."""
        with urllib.request.urlopen(self.status_url + BUDGET_STATUS_PATH, timeout=2) as r:
            data = json.loads(r.read())
        if not isinstance(data, dict):
            raise ValueError(f"{BUDGET_STATUS_PATH}: not an object")
        return {str(k): {str(n): int(v) for n, v in dict(c).items()} for k, c in data.items()}


class DataPlane:
    """The edge and the routing tier (``render``'s ``edge_config`` and ``render().config``)."""

    def __init__(self, conf_dir: Path, runtime_dir: Path, options: Options,
                 binary: str | None = None, log: Callable[[str], None] | None = None) -> None:
        binary = binary or find_binary()
        self.options = options
        self.runtime_dir = Path(runtime_dir)
        self.routing = Nginx("routing", conf_dir, runtime_dir, options.status_listen, binary,
                             log and (lambda line: log(f"routing: {line}")))
        self.edge = Nginx("edge", conf_dir, runtime_dir, options.edge_status_listen, binary,
                          log and (lambda line: log(f"edge: {line}")))

    def start(self, routing_text: str) -> None:
        """Start the routing tier with ``routing_text``, then the edge in front of it."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.runtime_dir.glob("*.sock"):  # a previous run's, killed
            stale.unlink()
        self.routing.start(routing_text)
        try:
            self.edge.start(edge_config(self.options))
        except NginxError:
            self.routing.stop()
            raise

    def apply(self, routing_text: str) -> Applied:
        return self.routing.apply(routing_text)

    def alive(self) -> bool:
        return self.routing.alive() and self.edge.alive()

    def dead(self) -> str:
        """Which master exited, with its exit code ("" while both run)."""
        return ", ".join(f"nginx {n.name} exited with {n.exit_code()}"
                         for n in (self.edge, self.routing)
                         if n.proc is not None and not n.alive())

    def stop(self) -> None:
        self.edge.stop()
        self.routing.stop()
