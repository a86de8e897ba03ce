"""Leader election over a ``coordination.k8s.io/v1`` Lease, and running the operator only
while this replica leads.

Semantics are client-go's ``leaderelection``: a standby takes the Lease when it is free
(``holderIdentity`` empty, as a leader leaves it on a graceful stop) or when its record has
not changed for ``leaseDurationSeconds`` *as measured on the standby's own clock* (no
trust in other machines' clocks); the leader renews every ``retry_period`` and gives up
when it could not renew for ``renew_deadline``. Every write of the Lease is a ``PUT``
guarded by its ``resourceVersion``, so two replicas can never both win the same round.

``Elector`` runs in a thread of its own (a busy event loop or a full reconcile pool cannot
delay a renewal) with an API client of its own. ``Elector.leading()`` is the write gate
the operator's client checks before every write: it turns false as soon as
``renew_deadline`` has passed since the last successful renewal began, whether or not the
renewal loop noticed. ``run_elected`` keeps a standby free of watches, caches and write
paths (kopf does not run at all), starts kopf when the Lease is won, stops it when the
Lease is lost (``LeadershipLost``: the process exits and its Deployment restarts it as a
standby) and releases the Lease on a graceful stop, so a standby takes over at its next
retry instead of after the lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from msv_operator import kube
from msv_operator.config import OperatorConfig

log = logging.getLogger("msv_operator.leader")

ACQUIRE, RENEW, WAIT = "acquire", "renew", "wait"


class LeadershipLost(RuntimeError):
    """This replica could not renew the Lease in time and stopped writing."""


def micro_time(at: datetime) -> str:
    """A ``MicroTime`` as the API server expects it."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(spec: Mapping[str, Any], identity: str, observed_at: float, now: float,
           default_duration: float) -> str:
    """What to do with a Lease whose ``spec`` was first seen (unchanged) at ``observed_at``.

    Our own record -> renew; a free one (no holder) -> acquire; someone else's -> acquire
    only once it has stayed unchanged for its lease duration on our clock, else wait.
    """
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return RENEW
    if not holder:
        return ACQUIRE
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return ACQUIRE if now >= observed_at + duration else WAIT


class Elector:
    """Acquire and renew one Lease from a background thread."""

    def __init__(self, config: OperatorConfig, client: kube.Kube | None = None,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self.identity = config.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.client = client or kube.Kube(f"{config.field_manager}-leader-election",
                                          qps=20, burst=20, pool_size=2)
        self.on_change = on_change or (lambda _leading: None)
        self.timeout = max(1.0, config.renew_deadline / 2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._renewed_at: float | None = None  # monotonic start of the last good renewal
        self._observed: tuple[str, float] | None = None  # (record, first seen at)
        self._lease: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._loop, name="msv-leader-election",
                                       daemon=True)

    # ---- the write gate -------------------------------------------------------------------
    def leading(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and time.monotonic() < renewed + self.config.renew_deadline

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> Elector:
        self.thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop the loop; with ``release`` give the Lease up if we still hold it."""
        self._stop.set()
        self.thread.join(self.timeout * 2 + self.config.retry_period)
        was_leading = self.leading()
        with self._lock:
            self._renewed_at = None
        if release and was_leading:
            self._release()
        self.client.close()

    def _loop(self) -> None:
        leading = False
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._try_acquire_or_renew(started)
            except kube.ApiError as e:
                log.warning("Lease %s/%s: %s", self.config.lease_namespace,
                            self.config.lease_name, e)
            except Exception:  # keep electing: a dead thread would be a silent standby
                log.exception("Lease %s/%s: unexpected error", self.config.lease_namespace,
                              self.config.lease_name)
            now_leading = self.leading()
            if now_leading != leading:
                leading = now_leading
                if leading:
                    log.info("Became the leader (Lease %s/%s, identity %s)",
                             self.config.lease_namespace, self.config.lease_name, self.identity)
                else:
                    log.error("Lost the Lease %s/%s: stopped writing",
                              self.config.lease_namespace, self.config.lease_name)
                self.on_change(leading)
            # A leader wakes up in time to notice its own renew deadline.
            wait = self.config.retry_period
            if leading and self._renewed_at is not None:
                wait = min(wait, max(0.05, self._renewed_at + self.config.renew_deadline
                                     - time.monotonic()))
            self._stop.wait(wait)

    def _try_acquire_or_renew(self, started: float) -> None:
        cfg = self.config
        lease = self.client.lease(cfg.lease_namespace, cfg.lease_name, self.timeout)
        spec = dict((lease or {}).get("spec") or {})
        record = repr(sorted(spec.items()))
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, time.monotonic())
        action = decide(spec, self.identity, self._observed[1], time.monotonic(),
                        cfg.lease_duration)
        if lease is not None and action == WAIT:
            if self._renewed_at is not None:  # someone else took it: stop writing at once
                with self._lock:
                    self._renewed_at = None
            return
        now = micro_time(datetime.now(UTC))
        new_spec = dict(spec)
        new_spec.update({"holderIdentity": self.identity,
                         "leaseDurationSeconds": max(1, round(cfg.lease_duration)),
                         "renewTime": now})
        if lease is None or action == ACQUIRE:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if lease is not None else 0)
        meta = {"name": cfg.lease_name, "namespace": cfg.lease_namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {"apiVersion": kube.LEASE_API, "kind": "Lease", "metadata": meta,
                "spec": new_spec}
        written = self.client.write_lease(body, self.timeout)
        with self._lock:
            if not self._stop.is_set():
                self._renewed_at = started
        self._lease = written
        self._observed = (repr(sorted((written.get("spec") or {}).items())), time.monotonic())

    def _release(self) -> None:
        """Leave the Lease free (no holder, duration 1 s), as client-go's ReleaseOnCancel."""
        lease = self._lease
        if lease is None:
            return
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        now = micro_time(datetime.now(UTC))
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1,
                     "renewTime": now, "acquireTime": now})
        body = {"apiVersion": kube.LEASE_API, "kind": "Lease",
                "metadata": {"name": self.config.lease_name,
                             "namespace": self.config.lease_namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec}
        try:
            self.client.write_lease(body, self.timeout)
            log.info("Released the Lease %s/%s", self.config.lease_namespace,
                     self.config.lease_name)
        except kube.ApiError as e:
            log.warning("Could not release the Lease (a standby takes over when it "
                        "expires): %s", e)


async def _flag_set(flag: Any) -> None:
    """Wait for an asyncio/threading Event (or a Future) to be set."""
    if isinstance(flag, asyncio.Event):
        await flag.wait()
    elif isinstance(flag, asyncio.Future):
        await asyncio.shield(flag)
    else:
        while not flag.is_set():
            await asyncio.sleep(0.1)


async def _standby_health(address: str | None) -> Any:
    """While standing by, answer the liveness endpoint kopf serves once it leads."""
    if not address:
        return None
    from urllib.parse import urlparse

    from aiohttp import web  # kopf's own dependency; its liveness endpoint uses it

    url = urlparse(address)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"leader": False, "state": "standby"})

    app = web.Application()
    app.router.add_get(url.path or "/", healthz)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port, reuse_address=True).start()
    return runner


async def run_elected(config: OperatorConfig,
                      lead: Callable[[Callable[[], bool], asyncio.Event], Awaitable[None]], *,
                      stop_flag: Any = None, liveness_endpoint: str | None = None,
                      elector: Elector | None = None) -> None:
    """Stand by until this replica holds the Lease, then ``await lead(gate, stop)``.

    ``stop`` is set when ``stop_flag`` (or SIGTERM/SIGINT in the main thread) asks to stop
    or the Lease is lost. Raises ``LeadershipLost`` in the second case.
    """
    loop = asyncio.get_running_loop()
    won, stop, lost = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def changed(leading: bool) -> None:  # called from the elector's thread
        loop.call_soon_threadsafe((won if leading else lost).set)

    elector = elector or Elector(config)
    elector.on_change = changed
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    watchers: list[asyncio.Task[Any]] = [asyncio.create_task(lost.wait())]
    if stop_flag is not None:
        watchers.append(asyncio.create_task(_flag_set(stop_flag)))
    for task in watchers:
        task.add_done_callback(lambda _t: stop.set())
    health = await _standby_health(liveness_endpoint)
    elector.start()
    log.info("Standing by for the Lease %s/%s as %s", config.lease_namespace,
             config.lease_name, elector.identity)
    try:
        waiting = asyncio.create_task(won.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopping.cancel()
        if won.is_set() and not stop.is_set():
            if health is not None:
                await health.cleanup()
                health = None
            await lead(elector.leading, stop)
    finally:
        for task in watchers:
            task.cancel()
        if health is not None:
            await health.cleanup()
        await loop.run_in_executor(None, elector.stop, not lost.is_set())
    if lost.is_set():
        raise LeadershipLost(f"lost the Lease {config.lease_namespace}/{config.lease_name}")


def lease_holder(lease: Mapping[str, Any] | None) -> str:
    """The holder named in a Lease ('' when free or absent)."""
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
