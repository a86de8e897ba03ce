"""The mirror: sample answered requests, send them to the candidate, score its answers.

The dataplane calls `offer_infer` / `offer_generate` after it answered a request (every
front end goes through it). On the request path that is a random draw and, for the sampled
share, a `put_nowait` on a bounded queue — nothing else; a full queue drops the request and
counts it. `WORKERS` background tasks send what is queued to the candidate's Service over
OIP v2 REST (one reused `aiohttp.ClientSession`, kept-alive connections; a quarter of
httpx's CPU per request, and the stable server pays that CPU), each within
`timeout_s`, carrying the caller's Authorization value, and score the answer with the
comparator of the model's task (model_server.mirror.{classification,generation,tensors}).
A failure of any kind is counted, logged at most every LOG_EVERY_S, and never reaches the
primary response. `stop` lets queued requests finish for up to STOP_SECONDS, then cancels.

Generation is mirrored only for greedy requests (no sampling, as model_server.generation's
rules decided): a sampled answer says nothing about agreement. Both continuations are
tokenized with this server's tokenizer and compared token by token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import orjson

from model_server.codec import InferRequest, decode_response, encode_request
from model_server.generation import Generation, GenerationRequest
from model_server.metrics import MirrorMetrics
from model_server.mirror import AUTHORIZATION
from model_server.mirror.classification import classification_agreement
from model_server.mirror.generation import token_agreement
from model_server.mirror.tensors import tensor_agreement

log = logging.getLogger(__name__)

WORKERS = 4
"""Mirrored requests in flight to the candidate at most (one connection each)."""
STOP_SECONDS = 2.0
"""On shutdown: how long queued mirrored requests may still take (bounded by timeout_s)."""
LOG_EVERY_S = 30.0
TEXT_OUTPUT = "text_output"

Tokenize = Callable[[str], Sequence[Any]]


def comparison_kind(task: str | None) -> str:
    """`classification`, `generation` or `tensors`: how answers of a `task` model compare."""
    if task and task.endswith("classification"):
        return "classification"
    if task == "text-generation":
        return "generation"
    return "tensors"


def tls_context(url: str, cert_file: Path | None) -> ssl.SSLContext | None:
    """TLS to the candidate, or None over http.

    The candidate's certificate names its Service, not the address the mirror uses, so the
    name is not checked. The chain is checked against this server's own certificate (one
    TLS Secret serves every variant of a ModelService: the candidate presents the same
    certificate); a server without a certificate of its own cannot check and does not.
    """
    if not url.startswith("https:"):
        return None
    if cert_file is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=str(cert_file))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the leaf itself
    return context


class Mirror:
    """Mirroring of one served model to one candidate variant."""

    def __init__(
        self,
        *,
        url: str,
        model_name: str,
        percent: float,
        queue_size: int,
        timeout_s: float,
        metrics: MirrorMetrics,
        tokenize: Tokenize = str.split,
        tls: ssl.SSLContext | None = None,
        random_draw: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self.share = percent / 100.0
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.tokenize = tokenize
        self.kind = "tensors"
        self._draw = random_draw
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(queue_size)
        self._infer_path = f"/v2/models/{quote(model_name, safe='')}/infer"
        self._generate_path = f"/v2/models/{quote(model_name, safe='')}/generate"
        self._tls = tls
        self._client: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._open = False
        self._last_log = 0.0
        self._unlogged = 0

    # request path: O(1) ------------------------------------------------------------------
    def offer_infer(self, request: InferRequest, outputs: Mapping[str, np.ndarray]) -> None:
        """Maybe mirror an answered infer request (the sampled share, if the queue has room)."""
        if self._draw() < self.share and self._open:
            self._put(("infer", request.inputs, outputs, AUTHORIZATION.get()))

    def offer_generate(self, generation: Generation, request: GenerationRequest) -> None:
        """Maybe mirror an answered greedy generation (its prompt as rendered, the request's
        parameters by their generate-extension names)."""
        if self._draw() < self.share and self._open and not generation.params.do_sample:
            params = request.parameters()
            self._put(("generate", generation.prompt, params, generation.text, AUTHORIZATION.get()))

    def _put(self, job: tuple[Any, ...]) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.dropped.inc()

    # lifecycle ---------------------------------------------------------------------------
    def start(self, task: str | None) -> None:
        """Start the workers (on the running loop); `task` picks the comparator."""
        self.kind = comparison_kind(task)
        self._client = aiohttp.ClientSession(
            base_url=self.url,
            connector=aiohttp.TCPConnector(
                limit=WORKERS, ssl=self._tls if self._tls is not None else True
            ),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            trust_env=False,  # the candidate is inside the cluster: never a proxy
            auto_decompress=False,
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"mirror-{i}") for i in range(WORKERS)
        ]
        self._open = True
        log.info(
            "Mirroring %.1f%% of requests to %s (comparison: %s)",
            self.share * 100,
            self.url,
            self.kind,
        )

    async def stop(self) -> None:
        """Take no more requests, let queued ones finish (bounded), close the client."""
        self._open = False
        if self._workers:
            try:
                async with asyncio.timeout(min(self.timeout_s, STOP_SECONDS)):
                    await self._queue.join()
            except TimeoutError:
                pass
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        if self._client is not None:
            await self._client.close()
            self._client = None

    # background --------------------------------------------------------------------------
    async def _work(self) -> None:
        queue = self._queue
        while True:
            job = await queue.get()
            try:
                await self._mirror(job)
            except Exception as exc:  # never let one answer stop the worker
                self._failed(f"{type(exc).__name__}: {exc}")
            finally:
                queue.task_done()

    async def _mirror(self, job: tuple[Any, ...]) -> None:
        if job[0] == "infer":
            _, inputs, outputs, authorization = job
            body, header_length = encode_request(inputs, outputs)
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(header_length),
            }
            response = await self._send(self._infer_path, body, headers, authorization)
            if response is not None:
                content, length = response
                theirs = decode_response(content, length)
                self._record(self._score_infer(outputs, theirs))
        else:
            _, prompt, params, text, authorization = job
            body = orjson.dumps({"text_input": prompt, "parameters": params})
            headers = {"content-type": "application/json"}
            response = await self._send(self._generate_path, body, headers, authorization)
            if response is not None:
                answer = orjson.loads(response[0]).get(TEXT_OUTPUT)
                if not isinstance(answer, str):
                    raise ValueError("the candidate's generate answer has no text_output")
                self._record([token_agreement(self.tokenize(text), self.tokenize(answer))])

    async def _send(
        self, path: str, body: bytes, headers: dict[str, str], authorization: Any
    ) -> tuple[bytes, str | None] | None:
        """POST to the candidate: (body, Inference-Header-Content-Length) if 2xx, else None
        (counted as failed)."""
        client = self._client
        assert client is not None
        if authorization:
            headers["authorization"] = (
                authorization.decode("latin-1") if isinstance(authorization, bytes)
                else authorization
            )  # fmt: skip
        metrics = self.metrics
        metrics.sent.inc()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.post(path, data=body, headers=headers) as response:
                    content = await response.read()
                    status = response.status
                    header_length = response.headers.get("inference-header-content-length")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return None
        metrics.duration.observe(time.perf_counter() - started)
        if not 200 <= status < 300:
            self._failed(f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}")
            return None
        return content, header_length

    def _score_infer(
        self, mine: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]
    ) -> list[float]:
        if self.kind == "classification":
            try:
                return classification_agreement(mine, theirs)
            except ValueError:  # no class in the answer: compare the tensors
                return [tensor_agreement(mine, theirs)]
        if self.kind == "generation" and TEXT_OUTPUT in mine:
            texts = np.asarray(mine[TEXT_OUTPUT]).ravel().tolist()
            other = np.asarray(theirs.get(TEXT_OUTPUT, np.empty(0, dtype=object))).ravel()
            if len(other) != len(texts):
                return [0.0] * len(texts)
            return [
                token_agreement(self.tokenize(_text(a)), self.tokenize(_text(b)))
                for a, b in zip(texts, other.tolist(), strict=True)
            ]
        return [tensor_agreement(mine, theirs)]

    def _record(self, scores: Sequence[float]) -> None:
        metrics = self.metrics
        for score in scores:
            metrics.agreement.observe(score)
        metrics.compared.inc()

    def _failed(self, reason: str) -> None:
        self.metrics.failed.inc()
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_S:
            self._unlogged += 1
            return
        log.warning(
            "Mirroring to %s failed: %s%s",
            self.url,
            reason,
            f" ({self._unlogged} more failures since the last message)" if self._unlogged else "",
        )
        self._last_log = now
        self._unlogged = 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
