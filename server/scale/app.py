"""The Ray Serve application: the ingress bound to N engine replicas.

``build_app(settings, replicas)`` is what ``splitasr serve --replicas N`` runs; ``app_builder`` is
the same for Serve's own tools (``serve run splitasr.scale.app:app_builder replicas=2``, or a
``serve deploy`` / KubeRay config whose ``import_path`` is ``splitasr.scale.app:app_builder`` and
whose ``args`` are settings by their field names).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from ..config import Settings
from .ingress import Ingress
from .replica import Replica

# Serve's default waits 1-2 s for a busy replica holding the model id; an adapter loads in milliseconds
MATCHING_TIMEOUT_ENV = "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S"
INGRESS_MAX_ONGOING_REQUESTS = 1000  # the ingress only waits on replicas


def replica_max_ongoing_requests(settings: Settings) -> int:
    """What Serve sends one replica at once: its queue, at least its batch budget (the rest wait at the
    router, where they can still go to another replica)."""
    return max(settings.max_queued_requests, settings.max_batch_rows)


def build_app(settings: Settings, replicas: int | None = None) -> Application:
    """The ingress over ``replicas`` engine replicas (default ``settings.replicas``, at least 1)."""
    count = max(1, replicas if replicas is not None else settings.replicas)
    fields = settings.model_dump(mode="json")
    engines = Replica.options(
        num_replicas=count,
        max_ongoing_requests=replica_max_ongoing_requests(settings),
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
    ).bind(fields)
    return Ingress.options(
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        ray_actor_options={
            "num_cpus": settings.ingress_cpus,
            # read when Serve is imported in the ingress, whose router picks the replicas
            "runtime_env": {"env_vars": {MATCHING_TIMEOUT_ENV: str(settings.scale_matching_timeout_s)}},
        },
    ).bind(engines, fields)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder: ``args`` are settings by field name (``replicas``, ``backbone``,
    ``store_dir``, ...); the environment's ``SPLITASR_*`` fill in the rest."""
    return build_app(Settings(**args))
