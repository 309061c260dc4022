"""scoring_worker.ScoringWorker: batch k is scored on a worker while the caller goes on (to sample batch k + 1),
at most one batch is in flight, every wait is handed to `waiting` with its batch's size, and an error on the
worker is raised in the caller: at the next submit, or at the end of the block. (Its two users have their own
tests with a real model: tests/test_train.py and tests/test_evaluate.py.)"""

import contextlib
import threading
import time

import pytest

from scoring_worker import ScoringWorker


def test_the_caller_goes_on_while_the_worker_scores_and_one_batch_at_most_is_in_flight():
    caller_went_on = [threading.Event() for _ in range(3)]
    log, waits = [], []

    def score(k):
        log.append((k, threading.current_thread().name, caller_went_on[k].wait(timeout=10)))
        time.sleep(0.05)  # still scoring when the caller submits the next batch, unless submit waits for it
        return 10 * k

    def waiting(units):  # the time the caller waits for scores: a StageTimer stage in build_repository
        waits.append(units)
        return contextlib.nullcontext()

    futures = []
    with ScoringWorker(waiting) as worker:
        for k, units in enumerate((2, 3, 1)):
            futures.append(worker.submit(score, k, units=units))
            caller_went_on[k].set()  # the caller runs on (in the real loop: it samples batch k + 1)
            assert all(f.done() for f in futures[:-1])  # the batch before was waited for, not left running
    assert [f.result() for f in futures] == [0, 10, 20]
    assert [(k, went_on) for k, _, went_on in log] == [(0, True), (1, True), (2, True)]  # in order, never inline
    assert all(name.startswith("scoring") for _, name, _ in log)
    assert waits == [2, 3, 1]  # each batch waited for once, with its own size; the last one at the end


def test_a_scoring_error_stops_the_caller_at_the_next_submit_or_at_the_end():
    ran = []

    def score(k, fail):
        ran.append(k)
        if fail:
            raise RuntimeError(f"scoring {k} broke")

    with pytest.raises(RuntimeError, match="scoring 0 broke"):
        with ScoringWorker() as worker:
            worker.submit(score, 0, True)
            worker.submit(score, 1, False)  # raises batch 0's error before handing batch 1 over
    assert ran == [0]
    with pytest.raises(RuntimeError, match="scoring 1 broke"):
        with ScoringWorker() as worker:
            worker.submit(score, 0, False)
            worker.submit(score, 1, True)
    assert ran == [0, 0, 1]

