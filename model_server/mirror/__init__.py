"""Mirroring to a rollout's candidate variant and comparing its answers (issue 9).

`sender.Mirror` samples requests the dataplane answered, sends them to the candidate's
Service in the background and scores the candidate's answer against this server's with the
comparator of the model's task: `classification` (same top label), `generation` (share of
identical greedy tokens) or `tensors` (share of elements within a tolerance).

`AUTHORIZATION` carries the caller's `Authorization` value from the front end that checked
it to the mirror (stable and candidate share the token Secret); it is set only when
authentication is on, in the task that handles the request.
"""

from __future__ import annotations

from contextvars import ContextVar

AUTHORIZATION: ContextVar[bytes | str | None] = ContextVar("mirror_authorization", default=None)
