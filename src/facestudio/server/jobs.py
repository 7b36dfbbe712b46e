"""A bounded job queue served by worker threads (one per device by default).

The queue holds at most `max_queued` waiting jobs: `submit` raises `QueueFull` beyond that, and the app answers
429 with a Retry-After estimated from recent job times. A job cancelled while waiting leaves the queue at once;
one cancelled or past its time limit while running stops at its next denoising step (`JobStopped` raised
from the pipeline's step callback) and frees its worker. Each job carries its own settings: nothing is kept
between jobs but the pipeline's weights.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED, TIMED_OUT = "queued", "running", "done", "failed", "cancelled", "timed_out"
FINISHED = frozenset({DONE, FAILED, CANCELLED, TIMED_OUT})


class QueueFull(Exception):
    """The queue is at its bound; `retry_after` is a guess, in seconds, of when a slot frees."""

    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobStopped(Exception):
    """Raised inside a running job when it was cancelled or ran out of time."""

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


@dataclass(eq=False)  # a job is itself: compared by identity, not by field values
class Job:
    """One generation: its plan (what was asked and how it runs), where it stands, and what it made."""

    id: str
    plan: Any
    total_steps: int
    state: str = QUEUED
    step: int = 0
    images: list[str] = field(default_factory=list)
    results: list[bytes] = field(default_factory=list)  # encoded images, for a plan that keeps them in memory
    error: str | None = None
    input_error: bool = False  # it failed on its input (a FaceStudioError), not on a bug
    interrupted: bool = False  # the server stopped while it ran (restored from its record after a restart)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    deadline: float | None = None  # time.monotonic() after which the running job stops
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    changed: int = 0  # bumped on every change, so event streams send only news
    preview: str | None = None  # the latest step's preview image as a data URL (tiny decoder), for event streams

    def check(self) -> None:
        """Raise `JobStopped` if this job should stop now (called between denoising steps)."""
        if self.cancel_requested.is_set():
            raise JobStopped(CANCELLED)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobStopped(TIMED_OUT)

    def show_preview(self, url: str) -> None:
        self.preview = url
        self.changed += 1

    def progress(self, step: int) -> None:
        self.step = step
        self.changed += 1
        self.check()


class JobQueue:
    """Waiting jobs in submission order, served by `workers` threads calling `run(job)`.

    Args:
        run (`Callable[[Job], None]`): does the work; calls `job.progress(step)` as it goes and appends result
            names to `job.images`. Any exception fails the job with its message (`JobStopped` cancels or times
            it out instead).
        max_queued (`int`): waiting jobs allowed (running ones not counted).
        workers (`int`, defaults to 1): jobs run at once; one per device, as one pipeline call fills a device.
        timeout (`float`, *optional*): seconds a job may run before it is stopped.
        on_finish (`Callable[[Job], None]`, *optional*): called after every job, whatever its end.
    """

    def __init__(self, run: Callable[[Job], None], max_queued: int, workers: int = 1, timeout: float | None = None,
                 on_finish: Callable[[Job], None] | None = None):
        if max_queued < 1 or workers < 1:
            raise ValueError("max_queued and workers must be at least 1")
        self.run, self.max_queued, self.timeout, self.on_finish = run, max_queued, timeout, on_finish
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: set[Job] = set()
        self.max_waiting_seen = 0
        self._durations: collections.deque[float] = collections.deque(maxlen=20)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"facestudio-worker-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            if len(self.waiting) >= self.max_queued:
                raise QueueFull(self._retry_after())
            self.waiting.append(job)
            self.max_waiting_seen = max(self.max_waiting_seen, len(self.waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: a waiting one leaves the queue now, a running one at its next step."""
        with self._cond:
            job.cancel_requested.set()
            removed = job.state == QUEUED and job in self.waiting
            if removed:
                self.waiting.remove(job)
                self._finish(job, CANCELLED, None)
        if removed:
            self._finished(job)

    def position(self, job: Job) -> int | None:
        """How many jobs wait before this one (0: next), or None when it is not waiting."""
        with self._cond:
            return next((i for i, j in enumerate(self.waiting) if j is job), None)

    def close(self, wait: float = 10.0) -> None:
        """Cancel the waiting jobs and stop the workers, waiting up to `wait` s for each to end its job.

        Running jobs are not cancelled here: they finish (or stop at their time limit) unless
        `cancel_running` was called first, as the app does on shutdown.
        """
        with self._cond:
            self._closed = True
            dropped = list(self.waiting)
            for job in dropped:
                job.cancel_requested.set()
                self._finish(job, CANCELLED, None)
            self.waiting.clear()
            self._cond.notify_all()
        for job in dropped:
            self._finished(job)
        for thread in self._threads:
            thread.join(wait)

    def cancel_running(self) -> None:
        """Ask every running job to stop at its next step."""
        with self._cond:
            for job in self.running:
                job.cancel_requested.set()

    def _retry_after(self) -> int:
        """Seconds until a waiting slot likely frees: one job's time, split over the workers."""
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 5.0
        return max(1, round(typical / len(self._threads)))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self.waiting.popleft()
                job.state, job.started = RUNNING, time.time()
                job.deadline = None if self.timeout is None else time.monotonic() + self.timeout
                job.changed += 1
                self.running.add(job)
            state, error = DONE, None
            try:
                job.check()
                self.run(job)
            except JobStopped as e:
                state = e.state
                error = "cancelled" if state == CANCELLED else f"stopped after the time limit of {self.timeout:g} s"
            except Exception as e:  # a failed job must not take its worker down
                state, error = FAILED, str(e) or type(e).__name__
                job.input_error = _is_input_error(e)
                if not job.input_error:
                    logger.exception("job %s failed", job.id)
            with self._cond:
                self.running.discard(job)
                self._durations.append(time.time() - job.started)
                self._finish(job, state, error)
            self._finished(job)

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        """Mark a job ended (under the lock); `_finished` then reports it, outside the lock."""
        job.state, job.error, job.finished = state, error, time.time()
        job.changed += 1

    def _finished(self, job: Job) -> None:
        """Call `on_finish` (which may write and delete files) without holding the lock, so `position` and
        `submit`, called from the event loop and request threads, never wait on disk work."""
        if self.on_finish is not None:
            try:
                self.on_finish(job)
            except Exception:
                logger.exception("recording job %s failed", job.id)


def _is_input_error(error: Exception) -> bool:
    from ..errors import FaceStudioError

    return isinstance(error, FaceStudioError)
