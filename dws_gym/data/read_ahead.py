"""Read minibatches ahead of a training loop in threads, without changing which minibatches it gets.

A uniformly drawn minibatch of a million-frame store touches hundreds of frame files, mostly not in memory: read in
the training thread, that time adds to every step (0.2-1 s a batch on a 2-core VM, where a gradient step of the
offline learners takes about as long, and far more than a GPU step). :class:`ReadAhead` splits a sampler into its two
parts: ``draw`` (the random indices: cheap, done in the caller's thread and in order, so the batches are exactly the
ones sequential sampling gives) and ``read`` (the disk work, done by worker threads ``depth`` batches ahead).
:attr:`ReadAhead.rng_state` is the generator's state after the last batch handed out: a checkpoint stores it, and
:meth:`ReadAhead.close` rewinds the generator to it, so the rest of a run draws as if nothing had been read ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["ReadAhead"]

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """``read(draw(rng))`` batches in order, the reads running ``depth`` batches ahead in ``workers`` threads.

    Args:
        draw: draws one batch's indices with the generator (called in the caller's thread, in order).
        read: reads the batch of those indices (called in a worker thread; must not touch ``rng``).
        rng: the generator (advanced up to ``depth`` batches beyond what was handed out until :meth:`close`).
        depth: batches read ahead (0: each batch is drawn and read when asked, in the caller's thread).
        workers: reading threads (page faults and copies of different batches overlap).

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(self, draw: Callable[[np.random.Generator], Any], read: Callable[[Any], T],
                 rng: np.random.Generator, *, depth: int = 2, workers: int = 2) -> None:
        if depth < 0 or workers < 1:
            raise ValueError(f"need depth >= 0 and workers >= 1, got depth={depth}, workers={workers}")
        self._draw, self._read, self.rng, self.depth = draw, read, rng, int(depth)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-ahead") if depth else None
        self._queue: deque[tuple[Future, dict[str, Any]]] = deque()
        self.rng_state: dict[str, Any] = rng.bit_generator.state
        """the generator's state right after drawing the last batch handed out"""
        for _ in range(self.depth):
            self._submit()

    def _submit(self) -> None:
        drawn = self._draw(self.rng)
        assert self._pool is not None
        self._queue.append((self._pool.submit(self._read, drawn), self.rng.bit_generator.state))

    def next(self) -> T:
        """The next batch: the one ``read(draw(rng))`` would give now without reading ahead."""
        if self._pool is None:
            if self.depth:
                raise RuntimeError("this ReadAhead is closed")
            batch = self._read(self._draw(self.rng))
            self.rng_state = self.rng.bit_generator.state
            return batch
        future, state = self._queue.popleft()
        self._submit()  # keep `depth` batches in flight while this one is finished and used
        batch = future.result()  # a reader's exception surfaces here
        self.rng_state = state
        return batch

    def close(self) -> None:
        """Stop the readers, drop the batches read ahead and rewind the generator to :attr:`rng_state`."""
        if self._pool is not None:
            self._queue.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self.rng.bit_generator.state = self.rng_state

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
