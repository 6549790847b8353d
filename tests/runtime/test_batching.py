"""Adaptive batching (mlops_runtime.batching): who shares a call, and what each request gets back.

A fake predictor records every call. On the worker thread (`thread=True`) it can hold the first
call open, so a test decides exactly which requests arrive while a call is in flight; on the
event loop (the default) requests arriving in the same loop turn share a call. Nothing here
measures time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from mlops_runtime import batching
from mlops_runtime.batching import Batcher
from mlops_runtime.serving_model import Batch, Prediction

NEVER = 3600.0  # a max delay no test reaches: only the in-flight call decides when a queue runs


class Recorder:
    """labels = 10 x the first feature; probabilities = (first feature, row sum). Holds its first
    call until `release` is set; refuses rows with a negative first feature."""

    backend = "fake"

    def __init__(self, hold_first: bool = True) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def predict(self, batch: Batch) -> Prediction:
        self.calls.append(batch.rows)
        self.started.set()
        assert self.release.wait(30), "the test never released the first call"
        first = batch.columns[0].astype(np.float64)
        if (first < 0).any():
            raise ValueError("negative first feature")
        rows = np.column_stack([first, sum(c.astype(np.float64) for c in batch.columns)])
        return Prediction(labels=first * 10, probabilities=rows)


def matrix(*rows: list[float]) -> Batch:
    return Batch.of_matrix(np.asarray(rows, dtype=np.float64))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(30_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def with_first_call_held(batcher: Batcher, predictor: Recorder, first: Batch,
                               queued: list[Batch]) -> list[Prediction | BaseException]:
    """`first` runs alone and is held; `queued` arrive meanwhile; then the call is released."""
    tasks = [asyncio.create_task(batcher.predict(predictor, first))]
    await asyncio.to_thread(predictor.started.wait, 30)
    for batch in queued:
        tasks.append(asyncio.create_task(batcher.predict(predictor, batch)))
    await until(lambda: batcher.unanswered == 1 + len(queued))
    predictor.release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_requests_share_a_call_and_each_gets_its_own_rows() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=64, max_delay=NEVER, thread=True)
    answers = await with_first_call_held(batcher, predictor, matrix([1, 1]),
                                         [matrix([2, 0]), matrix([3, 1], [4, 1]), matrix([5, 5])])
    assert predictor.calls == [1, 4]  # 4 requests, 2 calls
    assert [a.labels.tolist() for a in answers] == [[10], [20], [30, 40], [50]]
    assert [a.probabilities.tolist() for a in answers] == [[[1, 2]], [[2, 2]], [[3, 4], [4, 5]], [[5, 10]]]
    batcher.close()


async def test_a_lone_request_runs_at_once_without_a_timer() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=64, max_delay=NEVER, thread=True)
    task = asyncio.create_task(batcher.predict(predictor, matrix([7, 0])))
    await asyncio.to_thread(predictor.started.wait, 30)  # it reached the model with NEVER as its delay
    assert batcher.timer is None and not batcher.queue and batcher.calls_in_flight == 1
    predictor.release.set()
    assert (await task).labels.tolist() == [70]
    assert batcher.calls_in_flight == 0 and batcher.timer is None
    batcher.close()


async def test_requests_that_cannot_be_stacked_are_not_mixed() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=64, max_delay=NEVER, thread=True)
    wide = matrix([2, 0, 1])
    integers = Batch.of_matrix(np.asarray([[4, 1]], dtype=np.int64))
    answers = await with_first_call_held(batcher, predictor, matrix([1, 1]),
                                         [matrix([2, 2]), wide, integers, matrix([3, 3])])
    assert predictor.calls == [1, 2, 1, 1]  # the two float pairs together; width 3 and int64 alone
    assert [a.labels.tolist() for a in answers] == [[10], [20], [20], [40], [30]]
    assert answers[2].probabilities.tolist() == [[2, 3]]
    batcher.close()


async def test_one_bad_request_does_not_fail_the_others() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=64, max_delay=NEVER, thread=True)
    answers = await with_first_call_held(batcher, predictor, matrix([1, 1]),
                                         [matrix([2, 0]), matrix([-1, 0]), matrix([3, 0])])
    assert predictor.calls == [1, 3, 1, 1, 1]  # the stacked call raised: each request alone
    assert answers[1].labels.tolist() == [20] and answers[3].labels.tolist() == [30]
    assert isinstance(answers[2], ValueError) and "negative" in str(answers[2])
    batcher.close()


async def test_a_call_takes_at_most_max_rows_oldest_first() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=3, max_delay=NEVER, thread=True)
    answers = await with_first_call_held(batcher, predictor, matrix([1, 1]),
                                         [matrix([2, 0], [3, 0]), matrix([4, 0], [5, 0]), matrix([6, 0])])
    assert predictor.calls == [1, 2, 3]
    assert [a.labels.tolist() for a in answers] == [[10], [20, 30], [40, 50], [60]]
    batcher.close()


async def test_the_delay_bound_closes_a_queue_behind_a_long_call() -> None:
    predictor, batcher = Recorder(), Batcher(max_rows=64, max_delay=0.0, thread=True)
    first = asyncio.create_task(batcher.predict(predictor, matrix([1, 1])))
    await asyncio.to_thread(predictor.started.wait, 30)
    second = asyncio.create_task(batcher.predict(predictor, matrix([2, 2])))
    await until(lambda: batcher.calls_in_flight == 2)  # sent behind the held call, not kept open for more
    assert not batcher.queue
    predictor.release.set()
    answers = await asyncio.gather(first, second)
    assert [a.labels.tolist() for a in answers] == [[10], [20]]
    assert predictor.calls == [1, 1]
    batcher.close()


async def test_each_call_is_reported_with_its_rows() -> None:
    seen: list[int] = []
    predictor = Recorder()
    batcher = Batcher(max_rows=64, max_delay=NEVER, thread=True, on_call=seen.append)
    await with_first_call_held(batcher, predictor, matrix([1, 1]), [matrix([2, 0]), matrix([3, 0])])
    assert seen == [1, 2]
    batcher.close()


def test_categorical_columns_stack_and_split_back() -> None:
    one = Batch(rows=1, columns=[np.array([1.0]), np.array(["oslo"], dtype=object)])
    two = Batch(rows=2, columns=[np.array([2.0, 3.0]), np.array(["rome", "lima"], dtype=object)])
    stacked = batching.concat([one, two])
    assert stacked.rows == 3 and stacked.columns[1].tolist() == ["oslo", "rome", "lima"]
    parts = batching.split(Prediction(np.array([1, 2, 3]), None), [1, 2])
    assert [p.labels.tolist() for p in parts] == [[1], [2, 3]] and parts[1].probabilities is None


@pytest.mark.parametrize(("rows", "limit", "taken"), [([5], 2, 1), ([1, 1, 1], 2, 2), ([2, 1], 3, 2), ([3, 1], 2, 1)])
def test_take_is_at_least_one_request_then_what_fits(rows: list[int], limit: int, taken: int) -> None:
    assert batching.take(rows, limit) == taken


# -- the default: calls on the event loop -----------------------------------------------------


async def test_on_the_loop_requests_of_one_turn_share_a_call() -> None:
    predictor, batcher = Recorder(hold_first=False), Batcher(max_rows=64, max_delay=NEVER)
    answers = await asyncio.gather(*(batcher.predict(predictor, b) for b in
                                     (matrix([1, 1]), matrix([2, 0], [3, 0]), matrix([4, 4]))))
    assert predictor.calls == [4]
    assert [a.labels.tolist() for a in answers] == [[10], [20, 30], [40]]
    assert answers[2].probabilities.tolist() == [[4, 8]]


async def test_on_the_loop_a_lone_request_runs_on_the_next_turn_without_a_timer() -> None:
    predictor, batcher = Recorder(hold_first=False), Batcher(max_rows=64, max_delay=NEVER)
    task = asyncio.create_task(batcher.predict(predictor, matrix([7, 0])))
    await asyncio.sleep(0)  # the task ran up to its wait: one call scheduled for the next turn
    assert batcher.turn is not None and batcher.timer is None and predictor.calls == []
    await asyncio.sleep(0)
    assert predictor.calls == [1]  # the turn right after, no timer in between
    assert (await task).labels.tolist() == [70]


async def test_on_the_loop_a_request_alone_in_the_server_runs_in_its_own_turn() -> None:
    seen: list[int] = []
    predictor, batcher = Recorder(hold_first=False), Batcher(max_rows=64, max_delay=NEVER, on_call=seen.append)
    answer = await batcher.predict(predictor, matrix([7, 0]), alone=True)
    assert answer.labels.tolist() == [70] and predictor.calls == [1] and seen == [1]
    assert batcher.turn is None and batcher.unanswered == 0  # no loop turn was scheduled
    with pytest.raises(ValueError, match="negative"):
        await batcher.predict(predictor, matrix([-1, 0]), alone=True)
    # Someone already queued: `alone` is stale, the request joins the queue behind it.
    first = asyncio.create_task(batcher.predict(predictor, matrix([1, 0])))
    second = asyncio.create_task(batcher.predict(predictor, matrix([2, 0]), alone=True))
    assert [a.labels.tolist() for a in await asyncio.gather(first, second)] == [[10], [20]]
    assert predictor.calls[-1] == 2


async def test_on_the_loop_mismatched_and_bad_requests_keep_their_own_answers() -> None:
    predictor, batcher = Recorder(hold_first=False), Batcher(max_rows=2, max_delay=NEVER)
    answers = await asyncio.gather(*(batcher.predict(predictor, b) for b in
                                     (matrix([1, 0]), matrix([-1, 0]), matrix([2, 0, 0]), matrix([3, 0]))),
                                   return_exceptions=True)
    # max_rows 2: [1,0]+[-1,0] (raises, then each alone), then [2,0,0] and [3,0] (cannot stack)
    assert predictor.calls == [2, 1, 1, 1, 1]
    assert answers[0].labels.tolist() == [10] and isinstance(answers[1], ValueError)
    assert answers[2].labels.tolist() == [20] and answers[3].labels.tolist() == [30]


def test_the_flags_default_to_batching_on_the_loop_and_read_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_runtime.serve import parse_args

    required = ["--model-uri", "m.skops", "--sha256", "0" * 64]
    config = parse_args(required)
    assert (config.max_batch_rows, config.max_batch_delay_ms, config.inference_thread) == (
        batching.DEFAULT_MAX_ROWS, batching.DEFAULT_MAX_DELAY_MS, False)
    monkeypatch.setenv("MLOPS_MAX_BATCH_ROWS", "1")
    monkeypatch.setenv("MLOPS_INFERENCE_THREAD", "1")
    config = parse_args(required)
    assert config.max_batch_rows == 1 and config.inference_thread
    assert parse_args([*required, "--max-batch-rows", "32", "--max-batch-delay-ms", "5"]).max_batch_delay_ms == 5
    with pytest.raises(SystemExit):
        parse_args([*required, "--max-batch-rows", "0"])
