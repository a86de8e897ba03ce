"""The replicas' held counts, shared: KEDA reaches the scaler through a Service, so whichever
replica it talks to must know the requests every replica holds.

Each replica POSTs its own counts (``{"id": pod, "held": [[namespace, modelservice, variant,
n], ...]}``) to ``PATH`` on the other replicas' metrics port: at once when its counts change
and every ``interval`` seconds anyway. A replica's counts are forgotten ``ttl`` seconds after
its last message (a replica that died holds nothing). The other replicas are the ready
endpoints of the activator's own Service (read by the app). No shared store, no election:
a lost message is repaired by the next one, within ``interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from msv_operator.activator.holder import Signal, Target

log = logging.getLogger(__name__)

PATH = "/v1/peers/held"
INTERVAL_SECONDS = 1.0
TTL_SECONDS = 3.5


class PeerError(ValueError):
    """A peer's message is malformed."""


def encode(name: str, counts: Mapping[Target, int]) -> dict[str, Any]:
    return {"id": name, "held": [[*t, n] for t, n in sorted(counts.items()) if n > 0]}


def decode(doc: Any) -> tuple[str, Counter[Target]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        raise PeerError("peer message: 'id' must be a non-empty string")
    rows = doc.get("held")
    if not isinstance(rows, list):
        raise PeerError("peer message: 'held' must be a list")
    counts: Counter[Target] = Counter()
    for row in rows:
        if (not isinstance(row, list) or len(row) != 4
                or not all(isinstance(x, str) for x in row[:3])
                or isinstance(row[3], bool) or not isinstance(row[3], int) or row[3] < 0):
            raise PeerError(f"peer message: 'held' rows are [namespace, modelservice, "
                            f"variant, count], got {row!r}")
        counts[(row[0], row[1], row[2])] += row[3]
    return doc["id"], counts


class Peers:
    def __init__(self, name: str, own: Callable[[], Counter[Target]], changed: Signal, *,
                 port: int, interval: float = INTERVAL_SECONDS, ttl: float = TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.own = own
        self.changed = changed
        self.port = port
        self.interval = interval
        self.ttl = ttl
        self.clock = clock
        self.addresses: list[str] = []
        """The other replicas' pod IPs (set by the app)."""
        self.table: dict[str, tuple[float, Counter[Target]]] = {}

    def receive(self, doc: Any) -> None:
        name, counts = decode(doc)
        if name == self.name:
            return
        previous = self.table.get(name)
        self.table[name] = (self.clock(), counts)
        if previous is None or previous[1] != counts:
            self.changed.fire()

    def counts(self) -> dict[Target, int]:
        """Held requests by target, this replica's and every live peer's."""
        total = Counter(self.own())
        now = self.clock()
        for name, (stamp, counts) in list(self.table.items()):
            if now - stamp > self.ttl:
                del self.table[name]
                continue
            total.update(counts)
        return dict(total)

    async def _send(self, session: aiohttp.ClientSession, address: str,
                    doc: dict[str, Any]) -> None:
        host = f"[{address}]" if ":" in address else address
        try:
            async with session.post(f"http://{host}:{self.port}{PATH}", json=doc) as r:
                if r.status >= 300:
                    log.warning("Peer %s refused the held counts: HTTP %d", address, r.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.debug("Peer %s unreachable: %s", address, e)

    async def run(self) -> None:
        """Send the counts on every change of this replica's counts and every interval."""
        wake = self.changed.subscribe()
        timeout = aiohttp.ClientTimeout(total=max(self.interval, 0.5))
        last: dict[str, Any] | None = None
        stamp = 0.0
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    wake.clear()
                    doc = encode(self.name, self.own())
                    # a peer's message also wakes us: send only what changed, or a heartbeat
                    if doc != last or self.clock() - stamp >= self.interval:
                        last, stamp = doc, self.clock()
                        await asyncio.gather(*(self._send(session, a, doc)
                                               for a in self.addresses))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.interval)
        finally:
            self.changed.unsubscribe(wake)
