"""Clients calling a model through its stable Service on the real node, for the real-pod
tests (rollouts, brownout, the metrics pipeline): a new connection per request, as
kube-proxy balances connections; answers counted by HTTP status and by the variant that
answered."""

from __future__ import annotations

import errno
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from msv_contract.scaletozero import HELD_HEADER

POSITIVE = ["i really love this movie", "a great and happy film", "good food and nice people"]
NEGATIVE = ["the food was terrible", "an awful boring movie", "bad service and sad staff"]


class Load:
    """``clients`` threads sending requests through ``ip`` until stopped, each pausing
    ``pause`` seconds between requests. The counters are shared; a lost increment under a
    race cannot add a status or variant that was not answered, which is all tests read."""

    def __init__(self, ip: str, model: str, clients: int = 1, pause: float = 0.03,
                 timeout: float = 10) -> None:
        self.url = f"http://{ip}/v2/models/{model}/infer"
        self.pause = pause
        self.timeout = timeout
        self.held_ms: list[float] = []
        """``x-msv-held-ms`` of the answers that carried it (held while scaled to zero)."""
        self.statuses: Counter[int | str] = Counter()
        self.variants: Counter[str] = Counter()
        self.errors: list[str] = []
        self.connect_retries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]

    def _one(self, text: str, retry: bool = True) -> None:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                       "data": [text]}]}).encode()
        req = urllib.request.Request(self.url, data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                answer = json.loads(r.read())
                held = r.headers.get(HELD_HEADER)
                if held is not None:
                    self.held_ms.append(float(held))
                self.statuses[r.status] += 1
                self.variants[str((answer.get("parameters") or {}).get("variant"))] += 1
        except urllib.error.HTTPError as e:
            self.statuses[e.code] += 1
        except OSError as e:
            reason = getattr(e, "reason", e)
            if retry and getattr(reason, "errno", None) == errno.EHOSTUNREACH:
                # The connection never reached a server: under heavy connection churn the
                # local cluster's kube-proxy rarely leaves a new connection to a Service IP
                # un-translated (seen before and during any weight change). Nothing was
                # sent, so the client connects again, as a connect retry would; counted.
                self.connect_retries += 1
                self._one(text, retry=False)
                return
            self.statuses[type(e).__name__] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {e}")

    def _run(self, offset: int) -> None:
        texts = POSITIVE + NEGATIVE
        i = offset
        while not self._stop.is_set():
            self._one(texts[i % len(texts)])
            i += 1
            self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    @property
    def answered(self) -> int:
        return self.statuses[200]

    @property
    def failures(self) -> dict[int | str, int]:
        return {k: v for k, v in self.statuses.items() if k != 200}
