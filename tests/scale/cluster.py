"""Shared by the Ray Serve test modules: starting a local Ray cluster on a busy 2-core machine."""

from __future__ import annotations

import time


def start_ray(attempts: int = 3, **options) -> None:
    """``ray.init(**options)``, tried again when the node times out during startup.

    Each module starts its own local cluster. On a loaded 2-core machine the raylet of the second
    one (right after the first module's shutdown) has missed Ray's 30 s startup wait; a fresh try a
    few seconds later starts. Any other error is raised at once.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**options)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            time.sleep(5 * attempt)
