"""Training jobs from the device: the gRPC Trainer service and ``SplitASRClient.train`` / ``splitasr-device train``.

The default checks reuse the session's trained job (``jobs_server.trained_job``): the device follows it
to its end over ``Watch`` and writes the adapter atomically; uploads that break the protocol or the
limits are refused before anything is queued; another tenant's job is not found. The slow check runs
a whole enrollment from the device: upload, training, download, enroll, transcribe.
"""

from __future__ import annotations

import hashlib
import json

import grpc
import httpx
import pytest

from splitasr_device import SplitASRClient, TrainingFailed
from splitasr_device._proto import trainer_pb2, trainer_pb2_grpc
from splitasr_device.cli import main as device_main

from .conftest import TOKENS
from .jobs_server import JOBS, needs_tts

pytestmark = needs_tts


@pytest.fixture(scope="module")
def alice(jobs_server):
    with SplitASRClient(jobs_server.grpc_address, token=TOKENS["alice"]) as client:
        yield client


@pytest.fixture(scope="module")
def stub(jobs_server):
    channel = grpc.insecure_channel(jobs_server.grpc_address)
    yield trainer_pb2_grpc.TrainerStub(channel)
    channel.close()


def _metadata(tenant: str = "alice"):
    return (("authorization", f"Bearer {TOKENS[tenant]}"),)


def test_device_follows_a_job_and_writes_its_adapter_atomically(alice, trained_job, tmp_path):
    job = trained_job["job"]
    out = tmp_path / "me.safetensors"
    out.write_bytes(b"the previous adapter")
    events = []
    result = alice.follow_job(job["id"], out, on_event=events.append)
    assert out.read_bytes() != b"the previous adapter"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == result.sha256 == job["result"]["sha256"]
    assert result.stored_as == "alice-voice" and result.kind == "lora" and result.job_id == job["id"]
    assert [e.status for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    assert events[-1].fraction == 1.0
    assert list(tmp_path.iterdir()) == [out]  # no temp file left
    # stored on the server: enroll finds it by sha256 and sends nothing
    enrolled = alice.enroll(out)
    assert enrolled.uploaded_bytes == 0 and enrolled.name == "alice-voice"
    assert alice.job(job["id"]).status == "succeeded"


def test_a_failed_upload_leaves_the_old_file(alice, speaker, jobs_server, tmp_path):
    rows = speaker.rows()[:9]  # too few
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio_filepath": str(speaker.audio(r))}) + "\n" for r in rows))
    out = tmp_path / "me.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(grpc.RpcError) as caught:
        alice.train(manifest, out, epochs=1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too few utterances: 9" in caught.value.details()
    assert out.read_bytes() == b"old" and jobs_server.work_dirs() == []


def _config(speaker, rows, **fields) -> trainer_pb2.CreateJobRequest:
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return trainer_pb2.CreateJobRequest(config=trainer_pb2.JobConfig(manifest=manifest, store=False, **fields))


def _recording(name: str, data: bytes, size: int | None = None) -> list[trainer_pb2.CreateJobRequest]:
    header = trainer_pb2.CreateJobRequest(recording=trainer_pb2.RecordingHeader(
        name=name, size=len(data) if size is None else size))
    return [header, trainer_pb2.CreateJobRequest(chunk=data)]


def test_create_job_refuses_broken_uploads(stub, speaker, jobs_server):
    rows = speaker.rows()
    first = speaker.audio(rows[0])
    data = first.read_bytes()
    cases = {
        "config first": ([*_recording(rows[0]["audio_filepath"], data)], grpc.StatusCode.INVALID_ARGUMENT,
                         "first CreateJob message must be the config"),
        "chunk without header": ([_config(speaker, rows), trainer_pb2.CreateJobRequest(chunk=b"x")],
                                 grpc.StatusCode.INVALID_ARGUMENT, "must follow a recording header"),
        "short recording": ([_config(speaker, rows), *_recording("a.flac", data, len(data) + 5)],
                            grpc.StatusCode.INVALID_ARGUMENT, "incomplete"),
        "over the upload limit": ([_config(speaker, rows),
                                   *_recording("big.wav", b"\0" * (17 * 1024 * 1024 // 2)),
                                   *_recording("big2.wav", b"\0" * (17 * 1024 * 1024 // 2))],
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, "SPLITASR_TRAIN_MAX_UPLOAD_BYTES"),
        "missing recording": ([_config(speaker, rows), *_recording(first.name, data)],
                              grpc.StatusCode.INVALID_ARGUMENT, "was not uploaded"),
        "rank over the limit": ([_config(speaker, rows, parameters=trainer_pb2.JobParameters(rank=99))],
                                grpc.StatusCode.INVALID_ARGUMENT, "rank must be between 1 and 16"),
    }
    for name, (messages, code, text) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateJob(iter(messages), metadata=_metadata(), timeout=60)
        assert caught.value.code() == code, (name, caught.value.details())
        assert text in caught.value.details(), (name, caught.value.details())
    assert jobs_server.work_dirs() == []


def test_another_tenants_job_is_not_found_over_grpc(stub, trained_job):
    job_id = trained_job["job"]["id"]
    bob = _metadata("bob")
    for call in (lambda: stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), metadata=bob),
                 lambda: stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id), metadata=bob),
                 lambda: list(stub.Watch(trainer_pb2.WatchRequest(job_id=job_id, download=True), metadata=bob))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not stub.ListJobs(trainer_pb2.ListJobsRequest(), metadata=bob).jobs
    mine = stub.ListJobs(trainer_pb2.ListJobsRequest(limit=100), metadata=_metadata()).jobs
    assert job_id in [j.id for j in mine]
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id))  # no key
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_device_enrolls_end_to_end_from_its_recordings(jobs_server, speaker, tmp_path, capsys):
    """``splitasr-device train`` uploads, the server trains (store=false), the file comes back, the server
    forgets it; then ``enroll`` uploads it and a transcription uses it."""
    out = tmp_path / "me.safetensors"
    argv = ["--server", jobs_server.grpc_address, "--token", TOKENS["bob"], "--json", "train", "--manifest",
            str(speaker.train), "--out", str(out), "--epochs", "2", "--dev", "0.25"]
    assert device_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stored_as"] is None and report["dev_metric"] == "wer"
    assert 0 <= report["dev_after"] <= report["dev_before"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == report["sha256"]
    job = httpx.get(f"{jobs_server.url}{JOBS}/{report['job_id']}", headers=jobs_server.headers("bob")).json()
    assert job["status"] == "succeeded" and job["result"]["downloaded"] is True and not job["result"]["stored"]
    gone = httpx.get(f"{jobs_server.url}{JOBS}/{report['job_id']}/content", headers=jobs_server.headers("bob"))
    assert gone.status_code == 404 and "downloaded already" in gone.json()["error"]["message"]
    assert jobs_server.work_dirs() == []
    with SplitASRClient(jobs_server.grpc_address, token=TOKENS["bob"]) as client:
        enrolled = client.enroll(out, name="bob-voice")
        assert enrolled.uploaded_bytes == out.stat().st_size
        text = client.transcribe(speaker.audio(speaker.rows("test")[0]), adapter=enrolled).text
        assert text.strip()
        with pytest.raises(TrainingFailed, match="cancelled"):
            client.follow_job(_cancelled_job(client, speaker, tmp_path), tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def _cancelled_job(client: SplitASRClient, speaker, tmp_path) -> str:
    """A job cancelled right after it was created (the device's Ctrl-C)."""
    events = []
    out = tmp_path / "cancelled.safetensors"

    def cancel_on_first_event(event):
        events.append(event)
        if event.type == "status" and sum(e.type == "status" for e in events) == 1:
            assert client.cancel_job(event.job_id).status == "cancelled"

    with pytest.raises(TrainingFailed):
        client.train(speaker.train, out, epochs=5, on_event=cancel_on_first_event)
    assert not out.exists()
    return next(e.job_id for e in events if e.job_id)
