"""scoring_worker.py — score batch k on a worker thread while the GPU samples batch k + 1.

Making a video is GPU work; scoring it (face detection, optical flow, a judge) is mostly CPU work: 3-5 s a
video on the H100 box, a fifth of its sampling. Done one after the other, each waits for the other. So the
repository (repository.build_repository) and the evaluation (evaluate.evaluate) hand each sampled batch to
one worker thread and go on sampling:

    with ScoringWorker() as worker:
        for batch in batches:
            videos = model.sample(batch)        # GPU: batch k + 1 ...
            worker.submit(score, videos)        # ... while the worker scored batch k; now it takes k + 1

submit first waits for the batch before (usually done by then), so at most one batch is in flight: a slow
scorer holds the sampler back instead of piling decoded videos up in memory, and the scores reach their
one writer (the repository, a cache file) in order. An error on the worker is raised in the caller at the
next submit or at the end of the block. `waiting(units)`, if given, wraps every wait: e.g. a
run.StageTimer stage, which then measures the time the sampler lost to scoring, not scoring's whole cost.

Exports: ScoringWorker.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor


class ScoringWorker:
    """One scoring thread (named "scoring-..."), one batch in flight; see the module's docstring."""

    def __init__(self, waiting=None):
        self.waiting = waiting or (lambda units: contextlib.nullcontext())
        self.pending: tuple[Future, int] | None = None  # the batch on the worker, and its size
        self.executor = None

    def __enter__(self) -> "ScoringWorker":
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        return self

    def submit(self, score, *args, units: int = 1) -> Future:
        """Wait for the batch before (raising its error), then run score(*args) on the worker; its Future."""
        self.wait()
        future = self.executor.submit(score, *args)
        self.pending = (future, units)
        return future

    def wait(self) -> None:
        """Wait for the batch in flight, if any; an error it raised is raised here."""
        if self.pending is not None:
            future, units = self.pending
            self.pending = None
            with self.waiting(units):
                future.result()

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:  # leaving normally: the last batch's scores (and error) belong to the block
                self.wait()
        finally:
            self.executor.shutdown(wait=True)
