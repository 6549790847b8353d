"""Adaptive batching: requests waiting for the model under concurrency share one inference call.

Batching never makes a lone request wait for company: there is no timer on its path.

- Default, on the event loop: a request the HTTP server holds alone runs at once, in its own
  turn. Otherwise the first request to queue schedules a call for the next loop
  turn (`call_soon`, not a timer). Every request the loop reads and parses in the meantime
  joins that call (up to `max_rows` rows, oldest first; a remainder runs on the turn after).
  While the call runs, new requests wait in the socket buffers, exactly as they would without
  batching, and join the next call. At low load the queue holds one request and runs at once.
- `thread=True`, on one worker thread (ONNX Runtime and numpy release the GIL, so requests are
  read while the model computes): when no call is in flight a request goes to the thread at
  once; while one is in flight, arriving requests queue, and when it finishes the queue (up to
  `max_rows` rows) goes as one call. A queue collects for at most `max_delay` seconds: when its
  first request has waited that long behind a running call, the queue is closed and sent
  behind it, so a batch only holds requests that arrived within `max_delay` of each other.
  On one core the hand-off to the thread and back costs more than it saves (measured in
  docs/serving.md, "Batching"), hence not the default.

Requests are checked one by one before they queue (serve.py), so one bad request cannot fail
its neighbours; requests whose arrays cannot be stacked (another predictor, another layout,
dtype or width) run as their own calls; and when a stacked call raises, each request is run
alone so each gets its own answer or error. A stacked row's probabilities can differ from the
same row predicted alone in the last bit (a sum over a matrix is not summed in the same order).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from mlops_runtime.serving_model import Batch, Prediction, Predictor

DEFAULT_MAX_ROWS = 256
DEFAULT_MAX_DELAY_MS = 2.0
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# -- pure parts: what can share a call, and how rows go in and come back out ---------------------


def stack_key(predictor: Predictor, batch: Batch) -> Hashable:
    """Requests with equal keys can be concatenated into one call."""
    if batch.matrix is not None:
        # dtype objects, not dtype.str: building that string costs ~1,800 instructions each time
        return id(predictor), "matrix", batch.matrix.shape[1:], batch.matrix.dtype
    return id(predictor), "columns", tuple((c.dtype, c.shape[1:]) for c in batch.columns)


def concat(batches: Sequence[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    if batches[0].matrix is not None:
        return Batch.of_matrix(np.concatenate([b.matrix for b in batches]))
    columns = [np.concatenate(parts) for parts in zip(*(b.columns for b in batches))]
    return Batch(rows=sum(b.rows for b in batches), columns=columns)


def split(prediction: Prediction, sizes: Sequence[int]) -> list[Prediction]:
    """The rows of one call's answer, given back to the requests they came from."""
    labels, probabilities = prediction.labels, prediction.probabilities
    parts = []
    start = 0
    for size in sizes:  # slices, not np.split: that costs ~3 us a request in its own bookkeeping
        end = start + size
        parts.append(Prediction(labels[start:end], None if probabilities is None else probabilities[start:end]))
        start = end
    return parts


def take(rows: Sequence[int], max_rows: int) -> int:
    """How many queued requests (oldest first) the next call takes: at least one, then as many
    as fit in `max_rows`."""
    total, count = 0, 0
    for size in rows:
        if count and total + size > max_rows:
            break
        total, count = total + size, count + 1
    return count


def groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Positions of equal keys, in order of first appearance."""
    found: dict[Hashable, list[int]] = {}
    for position, key in enumerate(keys):
        found.setdefault(key, []).append(position)
    return list(found.values())


Outcome = Prediction | BaseException


def run_requests(predictors: Sequence[Predictor], batches: Sequence[Batch],
                 on_call: Callable[[int], None] = lambda rows: None) -> list[Outcome]:
    """Every request's prediction or exception, with as few calls as stacking allows (blocking;
    the worker thread runs it). `on_call(rows)` is told each call's size."""
    if len(batches) == 1:  # the low-load case: nothing to stack or split
        return [_one(predictors[0], batches[0], on_call)]
    outcomes: list[Outcome | None] = [None] * len(batches)
    for group in groups([stack_key(p, b) for p, b in zip(predictors, batches)]):
        predictor = predictors[group[0]]
        members = [batches[i] for i in group]
        if len(group) == 1:
            answers: list[Outcome] = [_one(predictor, members[0], on_call)]
        else:
            try:
                stacked = concat(members)
                on_call(stacked.rows)
                answers = split(predictor.predict(stacked), [b.rows for b in members])
            except Exception:  # someone's rows broke the call: each request alone, each its own answer
                answers = [_one(predictor, b, on_call) for b in members]
        for position, answer in zip(group, answers):
            outcomes[position] = answer
    return outcomes  # type: ignore[return-value]


def _one(predictor: Predictor, batch: Batch, on_call: Callable[[int], None]) -> Outcome:
    try:
        on_call(batch.rows)
        return predictor.predict(batch)
    except Exception as error:
        return error


# -- the queue on the event loop -----------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    predictor: Predictor
    batch: Batch
    future: asyncio.Future[Prediction]


@dataclass
class Batcher:
    """`await batcher.predict(predictor, batch)` from the event loop; the two modes are in the
    module doc. `max_delay` applies to the thread mode (the loop mode has no timer at all)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_delay: float = DEFAULT_MAX_DELAY_MS / 1000
    thread: bool = False
    initializer: Callable[[], None] | None = None   # per-thread setup (scikit-learn's config is per thread)
    on_call: Callable[[int], None] = lambda rows: None
    calls_in_flight: int = 0
    unanswered: int = 0       # requests taken and not answered yet (queued or in a call)
    queue: list[_Waiting] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    turn: asyncio.Handle | None = None   # the loop turn that runs the queue (thread=False)
    _executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        if self.thread:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="inference", initializer=self.initializer)

    async def predict(self, predictor: Predictor, batch: Batch, alone: bool = False) -> Prediction:
        """`alone`: the caller knows no other request is in flight (the HTTP server holds only
        this one), so on the loop it runs now, in this turn: there is nobody to wait for."""
        if alone and not self.thread and not self.queue:
            outcome = _one(predictor, batch, self.on_call)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        loop = asyncio.get_running_loop()
        waiting = _Waiting(predictor, batch, loop.create_future())
        self.unanswered += 1
        if not self.thread:
            self.queue.append(waiting)
            if self.turn is None:  # the next loop turn, not a timer: a lone request does not wait
                self.turn = loop.call_soon(self._run_here, loop)
        elif self.calls_in_flight == 0 and not self.queue:
            self._submit(loop, [waiting])  # nothing to wait for: run now
        else:
            self.queue.append(waiting)
            if sum(w.batch.rows for w in self.queue) >= self.max_rows:
                self._flush(loop)
            elif self.timer is None:
                self.timer = loop.call_later(self.max_delay, self._flush, loop)
        return await waiting.future

    def close(self) -> None:
        for handle in (self.timer, self.turn):
            if handle is not None:
                handle.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _take(self) -> list[_Waiting]:
        count = take([w.batch.rows for w in self.queue], self.max_rows)
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken

    def _run_here(self, loop: asyncio.AbstractEventLoop) -> None:
        self.turn = None
        taken = self._take()
        self._answer(taken, run_requests([w.predictor for w in taken], [w.batch for w in taken], self.on_call))
        if self.queue:
            self.turn = loop.call_soon(self._run_here, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the oldest queued requests (up to max_rows) to the thread, behind any call in
        flight; a remainder keeps queueing under a fresh timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.queue:
            return
        self._submit(loop, self._take())
        if self.queue:
            self.timer = loop.call_later(self.max_delay, self._flush, loop)

    def _submit(self, loop: asyncio.AbstractEventLoop, taken: list[_Waiting]) -> None:
        self.calls_in_flight += 1
        work = self._executor.submit(run_requests, [w.predictor for w in taken], [w.batch for w in taken],
                                     self.on_call)
        # One wake-up of the loop per call, not per request.
        work.add_done_callback(lambda done: loop.is_closed()
                               or loop.call_soon_threadsafe(self._finished, loop, taken, done))

    def _finished(self, loop: asyncio.AbstractEventLoop, taken: list[_Waiting],
                  done: concurrent.futures.Future[list[Outcome]]) -> None:
        self.calls_in_flight -= 1
        try:
            outcomes: list[Any] = done.result()
        except BaseException as error:  # the executor itself failed (shut down)
            outcomes = [error] * len(taken)
        self._answer(taken, outcomes)
        if self.calls_in_flight == 0 and self.queue:
            self._flush(loop)

    def _answer(self, taken: list[_Waiting], outcomes: list[Any]) -> None:
        self.unanswered -= len(taken)
        for waiting, outcome in zip(taken, outcomes):
            if waiting.future.done():  # the client went away
                continue
            if isinstance(outcome, BaseException):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)


def batch_size_histogram(registry: CollectorRegistry, model: str, version: str, role: str) -> Callable[[int], None]:
    """`mlops_batch_size`: rows per inference call; its observer, bound once."""
    histogram = Histogram("mlops_batch_size", "Rows per inference call (requests batched together).",
                          ["model", "version", "role"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
    return histogram.labels(model, version, role).observe
