"""Resource limits of the service: request body size, admission (bounded concurrency), per-request timeout.

Why: a perceptual metric is CPU/GPU-heavy (tens of ms per image, seconds per attack), so an HTTP
front-end without limits turns a burst of requests into an unbounded queue, memory exhaustion or a
crash. The rules here keep the server answering under any load:

- **Body size**: a request whose ``Content-Length`` exceeds the limit is refused with 413 before a
  byte is read; a body without a length (chunked) is counted while it streams and cut off at the
  limit (413 as well), so no upload larger than the limit is ever buffered.
- **Admission**: at most ``workers`` requests compute at once and at most ``queue`` more wait for a
  worker. A request that finds both full is answered 503 at once (with ``Retry-After``) instead of
  joining an ever-growing queue: the caller learns "busy" in microseconds and the server's memory
  and latency stay bounded.
- **Timeout**: a request that waits plus computes longer than ``timeout_s`` is answered 504. Python
  cannot kill a running thread, so its worker slot stays taken until the computation really
  finishes; otherwise timed-out work would keep running *beyond* the concurrency bound.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Optional


class Overloaded(Exception):
    """All worker slots and queue places are taken: the caller gets 503."""


class TimedOut(Exception):
    """The request ran past the per-request timeout: the caller gets 504."""


@dataclass
class Limits:
    """The service's limits (the defaults suit one CPU machine; see ``robustsim serve --help``)."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: Optional[int] = None  # None: io's $ROBUSTSIM_MAX_PIXELS (default 50 million)
    workers: int = 2
    queue: int = 8
    timeout_s: float = 60.0
    max_attack_steps: int = 200
    max_attack_pixels: int = 512 * 512
    max_k: int = 100

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "workers", "max_attack_steps", "max_attack_pixels", "max_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.queue) < 0:
            raise ValueError(f"queue must be >= 0, got {self.queue}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


class Gate:
    """Admission control plus a worker pool of fixed size (see the module docstring).

    ``run(fn, *args)`` either refuses at once (:class:`Overloaded`), or runs ``fn`` in one of
    ``workers`` threads and returns its result, raising :class:`TimedOut` after ``timeout_s``.
    Counters (``admitted``, ``running``, ``rejected``, ``timeouts``) feed the health endpoint.
    """

    def __init__(self, workers: int, queue: int, timeout_s: float):
        from concurrent.futures import ThreadPoolExecutor

        self.workers, self.queue, self.timeout_s = int(workers), int(queue), float(timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="robustsim-serve")
        self._lock = threading.Lock()
        self.admitted = 0  # waiting + running (released only when the thread's work is really done)
        self.running = 0
        self.rejected = 0
        self.timeouts = 0
        self.completed = 0

    def _admit(self) -> None:
        with self._lock:
            if self.admitted >= self.workers + self.queue:
                self.rejected += 1
                raise Overloaded(f"server busy: {self.admitted} requests in progress (limit {self.workers} running "
                                 f"+ {self.queue} queued); retry later")
            self.admitted += 1

    def _release(self, _future: Any = None) -> None:
        with self._lock:
            self.admitted -= 1
            self.completed += 1

    def _call(self, fn: Callable[..., Any], args: tuple) -> Any:
        with self._lock:
            self.running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.running -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._admit()
        try:
            fut = self._pool.submit(self._call, fn, args)
        except RuntimeError:  # the pool is shutting down
            self._release()
            raise Overloaded("server is shutting down") from None
        fut.add_done_callback(self._release)  # the slot frees when the work ends, not when we stop waiting
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            with self._lock:
                self.timeouts += 1
            fut.cancel()  # drops it if it is still queued; a running computation finishes in the background
            raise TimedOut(f"request took longer than the {self.timeout_s:g} s limit") from None

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "queue": self.queue, "in_progress": self.admitted,
                    "running": self.running, "rejected": self.rejected, "timeouts": self.timeouts,
                    "completed": self.completed}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def error_body(status: int, message: str) -> bytes:
    """The service's one error format: a single JSON line ``{"error": ..., "status": ...}``."""
    one_line = " ".join(str(message).split())
    return (json.dumps({"error": one_line, "status": int(status)}) + "\n").encode()


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (413) by header or while streaming.

    It sits outside the framework so that FastAPI's multipart parser never buffers more than the limit.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw_len = headers.get(b"content-length")
        if raw_len is not None:
            try:
                n = int(raw_len)
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if n > self.max_bytes:
                await _send_error(send, 413, f"request body of {n:,} bytes exceeds the upload limit of {self.max_bytes:,} bytes")
                return
        seen = 0
        started = False
        too_big = False
        replaced = False

        async def counted_receive():
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge()
            return msg

        async def tracked_send(msg):
            # the framework may turn our exception into its own error response (FastAPI: 400 "error
            # parsing the body"); whatever it answers after the limit was hit becomes our 413
            nonlocal started, replaced
            if too_big:
                if msg["type"] == "http.response.start" and not started:
                    started = replaced = True
                    await _send_error(send, 413, f"request body exceeds the upload limit of {self.max_bytes:,} bytes")
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if too_big:
                if not started:
                    await _send_error(send, 413, f"request body exceeds the upload limit of {self.max_bytes:,} bytes")
            else:
                raise


class _BodyTooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["Limits", "Gate", "Overloaded", "TimedOut", "BodyLimit", "error_body"]
