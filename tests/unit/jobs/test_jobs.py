"""Training job pieces that need no server: matching recordings to manifest lines, the dev draw, zips,
records on disk, parameter limits, and how a dead worker is described."""

from __future__ import annotations

import json
import re
import signal

import pytest

from splitasr.errors import InvalidInput, TooLarge
from splitasr.jobs import JobLimits, JobParameters, JobRecord, unpack_zip
from splitasr.jobs.records import MAX_EVENTS, RecordFiles, new_job_id
from splitasr.jobs.runner import describe_exit
from splitasr.jobs.validation import ManifestLine, check_parameters, dev_indices, match_parts, parse_manifest
from tests.files import zip_bytes

LINEARS = ("model.encoder.layers.0.fc1", "model.decoder.layers.0.fc1", "model.decoder.layers.0.self_attn.q_proj")
LIMITS = JobLimits(min_utterances=2, max_utterances=5, min_audio_seconds=0, max_audio_seconds=100,
                   max_upload_bytes=1000, max_epochs=20, max_rank=16, max_experts=4, linear_names=LINEARS,
                   served_targets=frozenset(LINEARS[1:]), languages=())


def line(n: int, audio: str) -> ManifestLine:
    return ManifestLine(n, audio, "words", "en")


def test_a_line_finds_its_recording_by_path_or_by_unique_file_name():
    parts = {"a.wav": b"A", "x/b.wav": b"B", "y/b.wav": b"C"}
    assert match_parts([line(1, "audio/a.wav"), line(2, "./x/b.wav"), line(3, "y/b.wav")], parts) == [b"A", b"B", b"C"]
    with pytest.raises(InvalidInput, match="matches several uploaded recordings"):
        match_parts([line(1, "z/b.wav"), line(2, "a.wav"), line(3, "x/b.wav"), line(4, "y/b.wav")], parts)
    with pytest.raises(InvalidInput, match="manifest line 2: recording 'c.wav' was not uploaded"):
        match_parts([line(1, "a.wav"), line(2, "c.wav")], parts)
    with pytest.raises(InvalidInput, match="not named by any manifest line"):
        match_parts([line(1, "a.wav"), line(2, "x/b.wav")], parts)


def test_manifest_lines_are_checked_one_by_one():
    rows = [{"audio_filepath": "a.wav", "text": "one"}, {"audio_filepath": "b.wav", "text": "two", "lang": "en"}]
    lines = parse_manifest("".join(json.dumps(r) + "\n" for r in rows).encode(), LIMITS)
    assert [(x.line, x.audio, x.lang) for x in lines] == [(1, "a.wav", "en"), (2, "b.wav", "en")]
    for bad, message in ((b"", "manifest is empty"), (b"\xff\xfe", "not UTF-8"), (b"[1]\n", "line 1: expected a JSON object"),
                         (b'{"text": "x"}\n', "'audio_filepath' must name"),
                         (b'{"audio_filepath": "a", "text": 3}\n', "'text' (the transcript) must be a string"),
                         (b'{"audio_filepath": "a", "text": "x", "offset": 2.5}\n', "'offset' is not supported"),
                         (b'{"audio_filepath": "a", "text": "x", "lang": "ko"}\n', "language 'ko'")):
        with pytest.raises(InvalidInput, match=re.escape(message)):
            parse_manifest(bad, LIMITS)


def test_the_dev_draw_is_seeded_and_never_takes_everything():
    assert dev_indices(12, 0.0, 0) == set()
    assert len(dev_indices(12, 0.2, 0)) == 2 and dev_indices(12, 0.2, 0) == dev_indices(12, 0.2, 0)
    assert dev_indices(12, 0.2, 0) != dev_indices(12, 0.2, 1)
    assert len(dev_indices(3, 0.01, 0)) == 1 and len(dev_indices(2, 0.5, 0)) == 1


def test_parameters_outside_the_limits_name_the_field():
    assert check_parameters(JobParameters(kind="glora"), "me", True, LIMITS).gate == "lowrank"
    assert check_parameters(JobParameters(kind="saml"), "me", True, LIMITS).experts == 4
    for params, message in ((JobParameters(targets="encoder"), "does not adapt"),
                            (JobParameters(targets="nothing.*"), "matches no linear layer"),
                            (JobParameters(kind="saml", experts=9), "experts must be between 2 and 4"),
                            (JobParameters(experts=2), "experts applies to kind saml only"),
                            (JobParameters(alpha=-1.0), "alpha must be a positive number"),
                            (JobParameters(rank=8, alpha=1e30), "over the limit of 16384"),
                            (JobParameters(learning_rate=float("nan")), "learning_rate"),
                            (JobParameters(batch_size=0), "batch_size"), (JobParameters(seed=-1), "seed")):
        with pytest.raises(InvalidInput, match=message):
            check_parameters(params, "me", True, LIMITS)


def test_a_zip_gives_its_manifest_and_parts_within_the_limit():
    manifest, parts = unpack_zip(zip_bytes({"manifest.jsonl": b"{}", "audio/a.wav": b"A"}), 1000)
    assert manifest == b"{}" and parts == {"audio/a.wav": b"A"}
    manifest, _ = unpack_zip(zip_bytes({"me.jsonl": b"M", "a.wav": b"A"}), 1000)  # any one top-level .jsonl
    assert manifest == b"M"
    with pytest.raises(TooLarge, match="inflates"):
        unpack_zip(zip_bytes({"manifest.jsonl": b"{}", "zeros.wav": b"\0" * 5000}), 1000)
    with pytest.raises(InvalidInput, match="one manifest"):
        unpack_zip(zip_bytes({"a.jsonl": b"", "b.jsonl": b""}), 1000)


def test_records_round_trip_and_keep_status_events(tmp_path):
    files = RecordFiles(tmp_path)
    job = JobRecord(new_job_id(), "alice", JobParameters(), "me", True, 12, 40.5, 10, 2, 1234)
    job.add_event("status", "queued", {"status": "queued"})
    for step in range(MAX_EVENTS + 10):
        job.add_event("step", f"step {step}")
    assert len(job.events) == MAX_EVENTS and job.events[0]["type"] == "status"
    assert [e["id"] for e in job.events] == sorted(e["id"] for e in job.events)
    files.save(job)
    [loaded] = files.load_all()
    assert loaded == job
    (tmp_path / "records" / "adjob-broken.json").write_text("{not json")
    assert [r.id for r in files.load_all()] == [job.id]  # the unreadable one is dropped
    assert not (tmp_path / "records" / "adjob-broken.json").exists()


def test_a_dead_worker_is_described():
    assert "killed by SIGKILL (out of memory?)" in describe_exit(-signal.SIGKILL)
    assert describe_exit(-signal.SIGSEGV).endswith("SIGSEGV")
    assert describe_exit(3) == "the training worker exited with status 3"


def test_one_server_process_per_jobs_directory(tmp_path):
    from splitasr.config import Settings
    from splitasr.engine.engine import Engine
    from splitasr.errors import NotReady
    from splitasr.jobs import JobManager

    settings = Settings(cache_dir=tmp_path / "cache", jobs_dir=tmp_path / "jobs", _env_file=None)
    engine = Engine(settings)
    first, second = JobManager(settings, engine), JobManager(settings, engine)
    first.start()
    try:
        second.start()
        assert first.disabled_reason is None
        with pytest.raises(NotReady, match="another server process uses the jobs directory"):
            second.list("alice")
        assert first.list("alice") == ([], False)
    finally:
        first.close()
        second.close()
    third = JobManager(settings, engine)  # the first let go of it
    third.start()
    assert third.disabled_reason is None
    third.close()
    (tmp_path / "file").write_text("")
    broken = JobManager(Settings(cache_dir=tmp_path / "cache", jobs_dir=tmp_path / "file" / "jobs",
                                 _env_file=None), engine)
    broken.start()
    assert "is not usable" in broken.disabled_reason
