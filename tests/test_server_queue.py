"""The bounded job queue with real worker threads and plain work functions."""

from __future__ import annotations

import threading
import time

import pytest

from facestudio.server.jobs import CANCELLED, DONE, FAILED, TIMED_OUT, Job, JobQueue, QueueFull


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def stepping(release: threading.Event):
    """Work that takes steps until `release` is set (or it is stopped)."""
    def run(job):
        step = 0
        while not release.is_set():
            step += 1
            job.progress(step)
            time.sleep(0.005)
    return run


def test_bound_cancel_and_failure():
    release = threading.Event()
    finished = []
    queue = JobQueue(stepping(release), max_queued=2, on_finish=finished.append)
    try:
        running = Job("a" * 16, None, 10)
        queue.submit(running)
        wait_for(lambda: running.state == "running")
        waiting = [Job(c * 16, None, 10) for c in "bc"]
        for job in waiting:
            queue.submit(job)
        with pytest.raises(QueueFull) as full:
            queue.submit(Job("d" * 16, None, 10))
        assert full.value.retry_after >= 1
        queue.cancel(waiting[0])  # leaves the queue at once: its slot is free
        assert waiting[0].state == CANCELLED and queue.position(waiting[1]) == 0
        queue.submit(Job("e" * 16, None, 10))
        queue.cancel(running)
        wait_for(lambda: running.state == CANCELLED)
        release.set()
        wait_for(lambda: len(finished) == 4)
        assert [j.state for j in finished[2:]] == [DONE, DONE] and queue.max_waiting_seen == 2
    finally:
        queue.close()


def test_a_failing_job_fails_alone_and_a_slow_one_times_out():
    def run(job):
        if job.plan == "boom":
            raise RuntimeError("boom")
        for step in range(1, 10**6):
            job.progress(step)
            time.sleep(0.005)

    queue = JobQueue(run, max_queued=4, timeout=0.2)
    try:
        bad, slow = Job("1" * 16, "boom", 1), Job("2" * 16, "slow", 10**6)
        queue.submit(bad)
        queue.submit(slow)
        wait_for(lambda: slow.state == TIMED_OUT)
        assert bad.state == FAILED and bad.error == "boom" and "time limit" in slow.error
    finally:
        queue.close()


def test_on_finish_runs_outside_the_lock_so_position_and_submit_do_not_wait_on_it():
    """The app's on_finish writes and trims files; the event loop asks `position` meanwhile."""
    recording, release = threading.Event(), threading.Event()

    def slow_record(job):
        recording.set()
        release.wait(10)

    queue = JobQueue(lambda job: None, max_queued=2, on_finish=slow_record)
    try:
        first = Job("f" * 16, None, 1)
        queue.submit(first)
        assert recording.wait(10) and first.state == DONE  # the state is set before on_finish runs
        answered = []
        asker = threading.Thread(target=lambda: answered.append((queue.position(first),
                                                                 queue.submit(Job("9" * 16, None, 1)))))
        asker.start()
        asker.join(2)
        assert answered == [(None, None)], "position/submit waited for on_finish"
    finally:
        release.set()
        queue.close()


def test_cancel_running_stops_the_running_jobs_only():
    release = threading.Event()
    queue = JobQueue(stepping(release), max_queued=2)
    try:
        running, waiting = Job("a" * 16, None, 10), Job("b" * 16, None, 10)
        queue.submit(running)
        wait_for(lambda: running.state == "running")
        queue.submit(waiting)
        assert queue.running == {running}
        queue.cancel_running()
        wait_for(lambda: running.state == CANCELLED)
        assert not waiting.cancel_requested.is_set()
        wait_for(lambda: waiting.state == "running")
        assert queue.running == {waiting}
        release.set()
        wait_for(lambda: waiting.state == DONE)
        assert queue.running == set()
    finally:
        queue.close()
