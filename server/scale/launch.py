"""``splitasr serve --replicas N``: run the application on a local Ray cluster, or join ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading

from ..config import Settings

log = logging.getLogger(__name__)

APP_NAME = "splitasr"


def serve_replicas(settings: Settings, replicas: int) -> None:
    """Start (or join) Ray, serve the app on HOST:PORT through Serve's HTTP proxy, and block until
    SIGINT or SIGTERM; then remove the app (and stop the cluster if this process started it)."""
    import ray
    from ray import serve

    from .app import build_app

    address = os.environ.get("RAY_ADDRESS")
    if address:  # joining a cluster: its own resources and settings apply
        ray.init(address=address)
    else:  # a local cluster with room for what is asked (logical CPUs), and no dashboard
        wanted = math.ceil(replicas * settings.replica_cpus + settings.ingress_cpus)
        ray.init(num_cpus=max(os.cpu_count() or 1, wanted), include_dashboard=False)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, replicas), name=APP_NAME, route_prefix="/")
        log.info("serving %d replicas on http://%s:%d (Ray %s)", replicas, settings.host, settings.port,
                 address or "local cluster")
        stop.wait()
    finally:
        if address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()
