"""The bench's /proc readers skip a thread or process that ends while they read it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from bench.process_costs import process_tree_cpu_seconds, thread_cpu_seconds


def test_a_thread_that_ends_between_the_open_and_the_read_is_left_out(monkeypatch) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="ending-thread")
    worker.start()
    try:
        me = os.getpid()
        assert len(thread_cpu_seconds(me)) >= 2  # main and at least the worker's group
        real_read = Path.read_text

        def ended(path: Path, *args, **kwargs) -> str:
            # Linux answers ESRCH when a task dies after its stat file was opened.
            if path.name == "stat" and path.parent.name != str(os.getpid()):
                raise ProcessLookupError(3, "No such process")
            return real_read(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", ended)
        assert list(thread_cpu_seconds(me)) == ["main"]
        assert process_tree_cpu_seconds(os.getpid()) > 0
    finally:
        stop.set()
        worker.join()


def test_a_process_that_has_ended_counts_no_time() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert process_tree_cpu_seconds(ended.pid) == 0.0
