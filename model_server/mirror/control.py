"""The mirror's target from the pod's own annotation, applied while the server runs.

The operator starts and stops a rollout's mirroring by annotating the stable variant's
running pods (`ANNOTATION`, JSON `{"url", "percent", "variant"}`) instead of changing their
Deployment, so a rollout restarts no pod. The pod template mounts its annotations with the
downward API; the kubelet rewrites that file (one `key="value"` line per annotation, the
value quoted as Go's `%q` does) on its next sync. `MirrorControl` reads the file every
`interval_s`, and when the annotation changes it starts a `Mirror` to the new target, puts
it on the dataplane and stops the previous one (queued requests finish, bounded). A missing
file or annotation means no mirroring; a malformed annotation is logged once and treated
as none (the request path never sees it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from model_server.mirror.sender import Mirror
from msv_contract.api import ANNOTATION_MIRROR

log = logging.getLogger(__name__)

ANNOTATION = ANNOTATION_MIRROR
"""The pod annotation naming the mirror target (the operator writes it)."""


@dataclass(frozen=True)
class MirrorTarget:
    url: str
    percent: float
    variant: str


class HasMirror(Protocol):
    mirror: Mirror | None


def read_annotations(text: str) -> dict[str, str]:
    """The downward API's `metadata.annotations` file as a dict. Each line is `key="value"`
    with the value quoted as Go's strconv.Quote does; lines that do not parse are skipped
    (an annotation of another tool must not stop ours from being read)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or not quoted.startswith('"'):
            continue
        try:
            # Go's quoting of printable text is JSON's (\" \\ \n \t \uXXXX); the rare \x or
            # \a escapes of control bytes fail here and only skip that line.
            value = json.loads(quoted)
        except ValueError:
            continue
        if isinstance(value, str):
            out[key] = value
    return out


def parse_target(value: str, base_url: Callable[[str], str]) -> MirrorTarget:
    """The annotation's JSON as a target; ValueError naming what is wrong."""
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object with url, percent and variant")
    url, percent, variant = data.get("url"), data.get("percent"), data.get("variant")
    if not isinstance(url, str):
        raise ValueError("needs url (the candidate Service's base URL)")
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not (0 < percent <= 100)
    ):
        raise ValueError("needs percent, a number in (0, 100]")
    if (
        not isinstance(variant, str)
        or not variant
        or not all(c.isalnum() or c in "_.-" for c in variant)
    ):
        raise ValueError("needs variant, the candidate's name")
    return MirrorTarget(base_url(url), float(percent), variant)


class MirrorControl:
    """Keeps `dataplane.mirror` in step with the annotation in `path`."""

    def __init__(
        self,
        path: Path,
        dataplane: HasMirror,
        make_mirror: Callable[[MirrorTarget], Mirror],
        task: str | None,
        base_url: Callable[[str], str],
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.dataplane = dataplane
        self.make_mirror = make_mirror
        self.task = task
        self.base_url = base_url
        self.interval_s = interval_s
        self.target: MirrorTarget | None = None
        self._raw: str | None = None
        self._mirror: Mirror | None = None

    def annotation(self) -> str | None:
        """The annotation's raw value as the file says now (None: no file, no annotation)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return read_annotations(text).get(ANNOTATION) or None

    async def apply(self) -> None:
        """One check: switch the mirror when the annotation changed (parsed, and a bad
        value logged, once per change)."""
        raw = self.annotation()
        if raw == self._raw:
            return
        self._raw = raw
        target = None
        if raw is not None:
            try:
                target = parse_target(raw, self.base_url)
            except ValueError as e:
                log.warning("Ignoring the %s annotation %r: it %s", ANNOTATION, raw, e)
        if target == self.target:
            return
        previous, mirror = self._mirror, None
        if target is not None:
            try:
                mirror = self.make_mirror(target)
                mirror.start(self.task)
            except Exception:
                log.exception("Could not start mirroring to %s", target.url)
                target, mirror = None, None
        self.target, self._mirror = target, mirror
        self.dataplane.mirror = mirror
        if previous is not None:
            await previous.stop()
        if target is None:
            log.info("Mirroring off (no usable %s annotation)", ANNOTATION)

    async def run(self) -> None:
        """Check every interval until cancelled; a failed check is logged, never fatal."""
        while True:
            try:
                await self.apply()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Could not apply the mirror annotation in %s", self.path)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Take the mirror off the dataplane and stop it."""
        mirror, self._mirror = self._mirror, None
        if mirror is not None:
            if self.dataplane.mirror is mirror:
                self.dataplane.mirror = None
            with contextlib.suppress(Exception):
                await mirror.stop()
