"""Blocking wrappers for code without an event loop: each runs its own loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from producer_sdk._kafka import warn_unclosed
from producer_sdk.client import ExplanationClient
from producer_sdk.producer import ContextLike, ExplanationProducer
from schemas.models import ExplanationResult

__all__ = ["SyncExplanationClient", "SyncExplanationProducer"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class _SyncBase:
    _async: Any

    def __init__(self, factory: Any, *args: Any, **kwargs: Any) -> None:
        self._loop: _LoopThread | None = _LoopThread(f"{type(self).__name__}-loop")

        async def build() -> Any:
            return factory(*args, **kwargs)

        self._async = self._loop.run(build())
        self._started = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is closed")
        return self._loop.run(coro)

    def start(self) -> None:
        """Connect (blocking)."""
        self._run(self._async.start())
        self._started = True

    def close(self) -> None:
        """Disconnect and stop the loop thread; idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.run(self._async.close())
        finally:
            self._started = False
            loop.stop()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_started", False):
            warn_unclosed(self)


class SyncExplanationProducer(_SyncBase):
    """Blocking :class:`ExplanationProducer`; same arguments, use ``with`` or ``close()``."""

    _async: ExplanationProducer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ExplanationProducer, *args, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> SyncExplanationProducer:
        """Connection and prefix from the KAFKA_* environment."""
        self = cls.__new__(cls)
        _SyncBase.__init__(self, ExplanationProducer.from_env, **kwargs)
        return self

    def submit(self, context: ContextLike, **options: Any) -> str:
        """See :meth:`ExplanationProducer.submit`; blocks until acknowledged."""
        return self._run(self._async.submit(context, **options))

    def submit_many(self, contexts: Iterable[ContextLike], **options: Any) -> list[str]:
        """See :meth:`ExplanationProducer.submit_many`."""
        return self._run(self._async.submit_many(list(contexts), **options))


class SyncExplanationClient(_SyncBase):
    """Blocking :class:`ExplanationClient`; same arguments, use ``with`` or ``close()``."""

    _async: ExplanationClient

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ExplanationClient, *args, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> SyncExplanationClient:
        """Connection and prefix from the KAFKA_* environment."""
        self = cls.__new__(cls)
        _SyncBase.__init__(self, ExplanationClient.from_env, **kwargs)
        return self

    def explain(self, context: ContextLike, **options: Any) -> ExplanationResult:
        """See :meth:`ExplanationClient.explain`."""
        return self._run(self._async.explain(context, **options))
