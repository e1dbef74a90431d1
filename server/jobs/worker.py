"""The training worker: a process of its own (multiprocessing "spawn": torch and fork do not mix) that
loads its own copy of the backbone once and runs one job at a time with ``splitasr train``'s code.

It talks to its :class:`~splitasr.jobs.runner.Worker` handle over one duplex pipe:

- in: ``("job", order)``, ``("cancel", job_id)``, ``("stop",)``;
- out: ``("progress", job_id, event, fields)`` (see :data:`splitasr.training.train.ProgressCallback`,
  plus ``"loading"``), ``("done", job_id, summary)``, ``("failed", job_id, code, message)``,
  ``("cancelled", job_id)``.

Its CPU threads are capped (``SPLITASR_TRAIN_THREADS``) before torch is imported, so training leaves
the serving process its cores; on a GPU it shares the device under a memory cap. It dies with the
server (Linux parent-death signal, and a broken pipe anywhere else), and writes the adapter only as a
whole file (temp file + rename) in the job's work folder: the server decides whether it is kept.
This module imports torch only inside the worker process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
_PR_SET_PDEATHSIG = 1
# Adapting encoder layers backpropagates through 30 s windows: a whole batch of 8 holds ~3.5 GiB of
# activations on tiny.en. Parts of 2 give the same update in well under half the memory.
ENCODER_MICRO_BATCH = 2


@dataclass(frozen=True)
class WorkerConfig:
    backbone: str
    cache_dir: Path  # converted backbones
    device: str
    quantize: str
    threads: int
    gpu_memory_fraction: float


class JobCancelled(Exception):
    pass


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the server dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cap_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before any parallel work
        torch.set_num_interop_threads(1)


def _load_backbone(config: WorkerConfig):
    import torch

    from ..backbones.loader import load_backbone
    from ..backbones.whisper import pick_device

    device = pick_device(config.device)
    if device.type == "cuda":
        # the serving process shares this GPU: training may use only a part of its memory
        torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device.index or 0)
    # fp32 everywhere: the adapter trains in full precision (serving runs it in the backbone's dtype)
    return load_backbone(config.backbone, cache_dir=config.cache_dir, device=str(device),
                         quantize=config.quantize, dtype=torch.float32)


def _release_memory() -> None:
    """Give the job's freed memory back to the system (glibc keeps it otherwise) while the worker idles."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM, so each job reports its own peak
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _train_config(params: dict[str, Any], backbone):
    from ..adapters import BackboneSpec, resolve_targets
    from ..training.train import TrainConfig

    linears = BackboneSpec.from_model(backbone.name, backbone.model).linear_shapes
    encoder = any(".encoder." in name for name in resolve_targets(params["targets"], linears))
    return TrainConfig(kind=params["kind"], rank=params["rank"], alpha=params["alpha"], targets=params["targets"],
                       gate=params["gate"] or "lowrank", experts=params["experts"] or 4, epochs=params["epochs"],
                       lr=params["learning_rate"], batch_size=params["batch_size"],
                       micro_batch_size=ENCODER_MICRO_BATCH if encoder else None, seed=params["seed"], quiet=True)


def run_job(conn: Connection, backbone, order: dict[str, Any]) -> None:
    """Train one job and report it; every outcome ends with exactly one done/failed/cancelled message."""
    from ..adapters import save_adapter
    from ..datasets.manifest import load_manifest
    from ..errors import SplitASRError
    from ..training.train import train_adapter

    job_id = order["job_id"]

    def report(event: str, fields: dict) -> None:
        while conn.poll():
            message = conn.recv()
            if message[0] == "cancel" and message[1] == job_id:
                raise JobCancelled  # (the server sends "stop" only to an idle worker)
        conn.send(("progress", job_id, event, fields))

    _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        report("preparing", {})
        train = load_manifest(order["train_manifest"])
        dev = load_manifest(order["dev_manifest"]) if order["dev_manifest"] else []
        result = train_adapter(backbone, train, dev, _train_config(order["parameters"], backbone), on_progress=report)
        path = save_adapter(Path(order["work_dir"]) / ADAPTER_FILE, result.adapter)
    except JobCancelled:
        conn.send(("cancelled", job_id))
        return
    except SplitASRError as exc:  # the job's own data or parameters: the tenant sees the message
        log.warning("training job %s failed: %s", job_id, type(exc).__name__)
        conn.send(("failed", job_id, exc.code, str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported as the job's failure; the worker keeps serving
        # the frames say where; the message is left out, as it might quote the job's data
        log.error("training job %s: %s in the worker\n%s", job_id, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        conn.send(("failed", job_id, "internal_error", f"training failed ({type(exc).__name__})"))
        return
    summary = result.summary()
    summary.update(path=str(path), file_bytes=path.stat().st_size, peak_rss_bytes=_peak_rss_bytes(),
                   job_wall_seconds=time.perf_counter() - start, job_cpu_seconds=time.process_time() - cpu_start)
    conn.send(("done", job_id, summary))


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Entry point of the worker process: load the backbone on the first job, then serve jobs."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal stops the server, which stops us
    _cap_threads(config.threads)
    backbone = None
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            if message[0] != "job":
                continue  # a cancel for a job that already ended
            order = message[1]
            if backbone is None:
                conn.send(("progress", order["job_id"], "loading", {}))
                try:
                    backbone = _load_backbone(config)
                except Exception as exc:  # noqa: BLE001 - the job fails; the next one retries the load
                    log.error("training worker: backbone failed to load (%s)", type(exc).__name__)
                    conn.send(("failed", order["job_id"], "backbone_unavailable",
                               f"the training worker could not load the backbone ({type(exc).__name__})"))
                    continue
            run_job(conn, backbone, order)
            _release_memory()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the server went away
