"""Per route: the Service's ready endpoints, the requests held for it and the bounded queue.

``Holder.acquire(port)`` answers at once with a ready endpoint (round robin) when there is
one; otherwise it holds the caller (at most ``queue`` per route: beyond, ``Full``) until an
endpoint is ready (returning how long it waited) or ``hold_seconds`` pass (``TimedOut``).
Every change of a held count fires ``Holder.changed``: KEDA's stream and the peers learn of a
held request as it arrives. Runs on one event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from msv_operator.activator.routes import Route

Target = tuple[str, str, str]
"""(namespace, modelservice, variant or "")."""
Endpoint = tuple[str, int]


class Full(Exception):
    """The route's queue of held requests is full."""


class TimedOut(Exception):
    """No endpoint became ready within the hold time."""


class Gone(Exception):
    """The route was removed while the request was held, with no endpoint ready."""


class Signal:
    """Wakes every subscriber when ``fire`` is called (one ``asyncio.Event`` each)."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._events.discard(event)

    def fire(self) -> None:
        for event in self._events:
            event.set()


@dataclass
class RouteState:
    route: Route
    endpoints: list[Endpoint] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    closed: bool = False
    turn: int = 0

    def pick(self) -> Endpoint | None:
        if not self.endpoints:
            return None
        self.turn = (self.turn + 1) % len(self.endpoints)
        return self.endpoints[self.turn]


class Holder:
    def __init__(self, queue: int, hold_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if queue < 1:
            raise ValueError(f"queue: must be at least 1, got {queue}")
        if hold_seconds <= 0:
            raise ValueError(f"hold seconds: must be positive, got {hold_seconds}")
        self.queue = queue
        self.hold_seconds = hold_seconds
        self.clock = clock
        self.routes: dict[int, RouteState] = {}
        self.changed = Signal()
        """Fired when a held count changes."""

    # -- the cluster's view, set by the app's loops ----------------------------------------
    def set_routes(self, routes: Mapping[int, Route]) -> tuple[list[int], list[int]]:
        """Adopt the routes; returns (ports opened, ports closed). A route whose Service or
        port changed keeps its held requests (its endpoints are read again)."""
        opened = sorted(set(routes) - set(self.routes))
        closed = sorted(set(self.routes) - set(routes))
        for port in closed:
            state = self.routes.pop(port)
            state.closed = True
            state.ready.set()  # held requests leave: to an endpoint if any, else Gone
        for port, route in routes.items():
            current = self.routes.get(port)
            if current is None:
                self.routes[port] = RouteState(route)
            elif current.route != route:
                current.route = route
                self.set_endpoints(port, [])
        return opened, closed

    def set_endpoints(self, port: int, endpoints: list[Endpoint]) -> None:
        state = self.routes.get(port)
        if state is None:
            return
        state.endpoints = list(endpoints)
        if endpoints:
            state.ready.set()
        else:
            state.ready.clear()

    # -- requests -----------------------------------------------------------------------
    async def acquire(self, port: int) -> tuple[Endpoint, float | None]:
        """A ready endpoint of the route and the seconds the request was held (None: not
        held). Raises ``Full``, ``TimedOut`` or ``Gone``; ``KeyError`` for an unknown port."""
        state = self.routes[port]
        endpoint = state.pick()
        if endpoint is not None:
            return endpoint, None
        if state.held >= self.queue:
            raise Full
        start = self.clock()
        deadline = start + self.hold_seconds
        state.held += 1
        self.changed.fire()
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise TimedOut
                try:
                    await asyncio.wait_for(state.ready.wait(), remaining)
                except TimeoutError:
                    raise TimedOut from None
                endpoint = state.pick()
                if endpoint is not None:
                    return endpoint, self.clock() - start
                if state.closed:
                    raise Gone
        finally:
            state.held -= 1
            self.changed.fire()

    def held(self) -> Counter[Target]:
        """Requests held now, by target (this replica only)."""
        counts: Counter[Target] = Counter()
        for state in self.routes.values():
            if state.held:
                counts[state.route.target] += state.held
        return counts

    def services(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """(namespace, service) -> [(listener port, service port)] of the current routes."""
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for port, state in self.routes.items():
            r = state.route
            out.setdefault((r.namespace, r.service), []).append((port, r.service_port))
        return out

    def holding(self, namespace: str, service: str) -> bool:
        return any(s.held for s in self.routes.values()
                   if (s.route.namespace, s.route.service) == (namespace, service))
