"""The server's handle on one training worker process: start, send, receive, stop, kill.

One runner thread of the :class:`~splitasr.jobs.manager.JobManager` owns each handle; other threads
only :meth:`Worker.send` a cancel (sends are serialised by a lock).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from typing import Any

from .worker import WorkerConfig, worker_main

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


class WorkerDied(Exception):
    """The worker process ended (crash, out of memory, killed) while the server waited for it."""

    def __init__(self, exitcode: int | None):
        super().__init__(describe_exit(exitcode))
        self.exitcode = exitcode


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the training worker stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the training worker was killed by {name}{hint}"
    return f"the training worker exited with status {exitcode}"


class Worker:
    """A spawned worker process and its end of the pipe."""

    def __init__(self, config: WorkerConfig, name: str = "splitasr-train"):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=worker_main, args=(child, config), name=name, daemon=True)
        self.process.start()
        child.close()  # ours closed: a dead worker reads as EOF instead of a hang
        self._send_lock = threading.Lock()
        self.started_at = time.monotonic()
        log.info("training worker started (pid %s, %d thread(s))", self.process.pid, config.threads)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError):
                raise WorkerDied(self.process.exitcode) from None

    def receive(self, timeout: float) -> tuple[Any, ...] | None:
        """The next message, or None when none came within ``timeout`` seconds; WorkerDied at EOF."""
        try:
            if not self._conn.poll(timeout):
                return None
            return self._conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise WorkerDied(self.process.exitcode) from None

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        with contextlib.suppress(WorkerDied):
            self.send(("stop",))
        self.process.join(STOP_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self._conn.close()
