"""The device side of enrollment with no server: reading a manifest's recordings, the upload's messages,
the check and atomic write of a downloaded adapter, and the progress display."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from splitasr_device import DeviceError, TrainingEvent
from splitasr_device._proto import trainer_pb2
from splitasr_device.progress import ProgressBar
from splitasr_device.training import keep_adapter, read_recordings, upload_requests


def _manifest(tmp_path, rows: list[dict]):
    path = tmp_path / "me" / "train.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_recordings_are_read_relative_to_the_manifest_and_sent_in_order(tmp_path):
    (tmp_path / "me" / "audio").mkdir(parents=True)
    (tmp_path / "me" / "audio" / "a.wav").write_bytes(b"A" * 300_000)
    (tmp_path / "b.flac").write_bytes(b"B")
    manifest = _manifest(tmp_path, [{"audio_filepath": "audio/a.wav", "text": "one"},
                                    {"audio_filepath": str(tmp_path / "b.flac"), "text": "two"},
                                    {"audio_filepath": "audio/a.wav", "text": "one again"}])
    data, recordings = read_recordings(manifest)
    assert data == manifest.read_bytes()
    assert [(r.name, r.size) for r in recordings] == [("audio/a.wav", 300_000), (str(tmp_path / "b.flac"), 1)]
    sent = []
    config = trainer_pb2.JobConfig(manifest=data)
    messages = list(upload_requests(config, recordings, lambda done, total: sent.append((done, total))))
    kinds = [m.WhichOneof("payload") for m in messages]
    assert kinds == ["config", "recording", "chunk", "chunk", "recording", "chunk"]  # 256 KiB chunks
    assert b"".join(m.chunk for m in messages[2:4]) == b"A" * 300_000
    assert sent[-1] == (len(data) + 300_001, len(data) + 300_001)


def test_a_manifest_naming_a_missing_file_fails_on_the_device(tmp_path):
    manifest = _manifest(tmp_path, [{"audio_filepath": "gone.wav", "text": "x"}])
    with pytest.raises(DeviceError, match="train.jsonl:1: recording 'gone.wav' not found"):
        read_recordings(manifest)
    with pytest.raises(DeviceError, match="does not exist"):
        read_recordings(tmp_path / "nothing.jsonl")
    with pytest.raises(DeviceError, match="not a JSON object with audio_filepath"):
        read_recordings(_manifest(tmp_path, [{"text": "x"}]))


def _job(data: bytes) -> trainer_pb2.TrainingJob:
    return trainer_pb2.TrainingJob(id="adjob-1", status=trainer_pb2.SUCCEEDED, result=trainer_pb2.JobResult(
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), kind="lora"),
        metrics=trainer_pb2.JobMetrics(dev_metric="wer", dev_before=0.5, dev_after=0.25, wall_seconds=12.0))


def test_a_download_is_checked_before_it_replaces_the_file(tmp_path):
    out = tmp_path / "me.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(DeviceError, match="corrupt"):
        keep_adapter(out, _job(b"the adapter"), b"the adaptor")
    assert out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]
    result = keep_adapter(out, _job(b"the adapter"), b"the adapter")
    assert out.read_bytes() == b"the adapter" and list(tmp_path.iterdir()) == [out]
    assert (result.dev_before, result.dev_after, result.stored_as, result.kind) == (0.5, 0.25, None, "lora")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    events = [TrainingEvent("j", "upload", "1.0 of 1.0 MB", "uploading", "upload", 1.0),
              TrainingEvent("j", "step", "step 2/4: loss 1.2", "running", "training", 0.5, 1, 2),
              TrainingEvent("j", "epoch", "epoch 1/2: train loss 1.1", "running", "training", 0.5, 1, 2),
              TrainingEvent("j", "status", "succeeded: stored", "succeeded", "done", 1.0, 2, 2)]
    log = io.StringIO()
    bar = ProgressBar(log)
    for event in events:
        bar(event)
    assert log.getvalue().splitlines() == ["uploading: 1.0 of 1.0 MB", "running: epoch 1/2: train loss 1.1",
                                           "succeeded: stored"]
    terminal = _Terminal()
    bar = ProgressBar(terminal)
    for event in events:
        bar(event)
    drawn = terminal.getvalue()
    assert "\r\x1b[K" in drawn and "50% epoch 1/2, step 2/4" in drawn and drawn.endswith("\n")
