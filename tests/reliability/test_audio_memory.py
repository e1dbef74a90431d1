"""Decoding memory is the decoded output (at most the limit), whatever a small compressed file holds.

Each case decodes in a fresh process and reads its peak resident memory (``VmHWM``, which, unlike
``ru_maxrss``, does not inherit the forking parent's): hours of
FLAC silence are a few hundred KB, and their 16 kHz float32 samples are 225 MiB per hour.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.reliability.hostile import silence_flac, without_flac_length

BYTES_PER_S = 16_000 * 4
MIB = 1 << 20
SLACK = 48 * MIB  # frames in flight, the resampler, FFmpeg's buffers

MEASURE = r"""
import json, sys
from splitasr.audio import decode_audio
from splitasr.errors import BadAudio

def peak_kib():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1])

data = open(sys.argv[1], "rb").read()
before = peak_kib()
try:
    result = len(decode_audio(data, max_seconds=float(sys.argv[2]))) / 16_000
except BadAudio as exc:
    result = str(exc)
print(json.dumps({"result": result, "peak_bytes": (peak_kib() - before) * 1024}))
"""


def decode_in_a_fresh_process(tmp_path, data: bytes, max_seconds: float) -> dict:
    path = tmp_path / "audio.flac"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(max_seconds)], capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout)


def test_an_hour_of_silence_costs_its_samples_once(tmp_path):
    flac = silence_flac(3600)  # 8 kHz: resampled while decoding
    measured = decode_in_a_fresh_process(tmp_path, flac, max_seconds=3 * 3600)
    assert measured["result"] == pytest.approx(3600, abs=1)
    output = 3600 * BYTES_PER_S
    assert measured["peak_bytes"] < output + SLACK, (len(flac), measured)  # was twice the output


def test_a_file_that_hides_its_length_stops_at_the_limit(tmp_path):
    flac = without_flac_length(silence_flac(3 * 3600))  # 3 h, header says nothing; limit 30 min
    measured = decode_in_a_fresh_process(tmp_path, flac, max_seconds=1800)
    assert "longer than the limit of 1800 s" in measured["result"]
    assert measured["peak_bytes"] < 1800 * BYTES_PER_S + SLACK, measured


@pytest.mark.slow
def test_a_263_kb_flac_of_three_hours_of_silence_under_the_default_limit(tmp_path):
    flac = silence_flac(2 * 3600 + 58 * 60)  # 2 h 58 min, under the default 3 h limit
    assert len(flac) < 300 * 1024
    measured = decode_in_a_fresh_process(tmp_path, flac, max_seconds=3 * 3600)
    output = (2 * 3600 + 58 * 60) * BYTES_PER_S  # 652 MiB
    assert measured["peak_bytes"] < output + SLACK < 1 << 30, measured  # was 1321 MiB
