"""Quantized backbones: WER, resident memory and speed of fp32 vs int8 vs NF4, with and without an adapter.

Every (backbone, quantization) pair runs in a fresh Python process, so its resident memory is not
polluted by the previous one. Each process loads the backbone, measures the memory the model added
(RSS after load minus RSS before, after a garbage collection and ``malloc_trim``) and the bytes its
weights occupy, then scores greedy decoding on each manifest (WER after Whisper's English normalizer,
RTF = wall / audio seconds), and finally the same with the adapter file loaded into slot 1, when one
is given for that backbone. The adapter must match the backbone's fingerprint, which quantization
leaves unchanged: an adapter trained on the NF4 backbone also loads on fp32 and int8.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REAL_SPEECH_MANIFEST = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech" / "manifest.jsonl"
MODES = ("none", "int8", "nf4")
MiB = 1 << 20


def _rss_bytes() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed fp32 weights back to the OS before measuring
    except OSError:  # not glibc
        pass
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(backbone: str, mode: str, manifests: dict[str, Path], adapter: Path | None, *, cache_dir: Path,
            threads: int, batch_size: int) -> dict:
    """One (backbone, quantization) row: load, memory, then WER/RTF per manifest (with the adapter too)."""
    import torch

    from ..backbones.loader import load_backbone
    from ..backbones.quantize import weight_bytes
    from ..datasets.manifest import load_manifest
    from ..evaluation import attach_adapter, evaluate

    torch.set_num_threads(threads)
    before = _rss_bytes()
    start = time.perf_counter()
    bb = load_backbone(backbone, cache_dir=cache_dir, device="cpu", quantize=mode)
    row: dict = {"backbone": backbone, "quantize": mode, "load_seconds": round(time.perf_counter() - start, 2),
                 "weight_mib": round(weight_bytes(bb.model) / MiB, 3),
                 "model_rss_mib": round((_rss_bytes() - before) / MiB, 1)}
    data = {name: load_manifest(path) for name, path in manifests.items()}
    for name, utterances in data.items():
        report = evaluate(bb, utterances, batch_size=batch_size)
        row[name] = {"wer": report["wer"], "rtf": report["rtf"], "utterances": report["utterances"]}
    if adapter is not None:
        info = attach_adapter(bb, adapter)
        row["adapter"] = {"path": str(adapter), "kind": info["kind"], "parameters": info["parameters"]}
        for name, utterances in data.items():
            report = evaluate(bb, utterances, batch_size=batch_size, slot=1)
            row[f"{name}+adapter"] = {"wer": report["wer"], "rtf": report["rtf"]}
    return row


def run(*, backbones: list[str], modes: list[str], manifests: dict[str, Path], adapters: dict[str, Path],
        cache_dir: Path, threads: int = 2, batch_size: int = 8, adapter_modes: list[str] | None = None,
        quiet: bool = True) -> dict:
    """Measure every (backbone, mode) pair, each in its own process; returns the JSON report.

    ``adapter_modes``: the modes that also score the backbone's adapter (default: every mode).
    ``quiet=False``: a progress bar on a terminal.
    """
    from ..progress import track

    rows = []
    for backbone, mode in track([(b, m) for b in backbones for m in modes], "bench quant", unit="run", quiet=quiet):
        job = {"backbone": backbone, "mode": mode, "manifests": {k: str(v) for k, v in manifests.items()},
               "adapter": str(adapters[backbone]) if backbone in adapters and (
                   adapter_modes is None or mode in adapter_modes) else None,
               "cache_dir": str(cache_dir), "threads": threads, "batch_size": batch_size}
        out = subprocess.run([sys.executable, "-m", "splitasr.bench.quant", json.dumps(job)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{backbone}/{mode} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"threads": threads, "device": "cpu", "manifests": {k: str(v) for k, v in manifests.items()},
            "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Per backbone and manifest: each mode's WER, and NF4 + adapter against fp32 without one."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row["backbone"], {})
        for key, value in row.items():
            if isinstance(value, dict) and "wer" in value:
                entry[f"{key}/{row['quantize']}"] = value["wer"]
    for entry in out.values():
        for key in [k for k in entry if k.endswith("+adapter/nf4")]:
            name = key.removesuffix("+adapter/nf4")
            if f"{name}/none" in entry:
                entry[f"{name}: nf4+adapter beats fp32"] = entry[key] < entry[f"{name}/none"]
    return out


def _worker(job: dict) -> None:
    row = measure(job["backbone"], job["mode"], {k: Path(v) for k, v in job["manifests"].items()},
                  Path(job["adapter"]) if job["adapter"] else None, cache_dir=Path(job["cache_dir"]),
                  threads=job["threads"], batch_size=job["batch_size"])
    print(json.dumps(row))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one row of `splitasr bench quant` (internal)")
    parser.add_argument("job", help="JSON job description")
    _worker(json.loads(parser.parse_args().job))
