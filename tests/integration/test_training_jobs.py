"""Training jobs over REST against a real server: real tiny.en, real synthetic speech, a real worker process.

One small job (12 utterances, 2 epochs, decoder targets) trains an adapter that loads and changes the
transcription, while a plain transcription request completes and a second job waits in the queue (and
is cancelled there); every validation error is a clear 400 (or 413) that leaves nothing behind; a
tenant never sees another tenant's jobs; recordings exist only while a job runs.
"""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from splitasr.adapters import load_adapter
from tests.files import zip_bytes

from .jobs_server import (
    JOBS,
    EventReader,
    Speaker,
    manifest_bytes,
    needs_tts,
    post_job,
    recordings,
    transcribe,
)

pytestmark = needs_tts


def wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, 16_000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def samples(speaker: Speaker, row: dict) -> np.ndarray:
    data, rate = sf.read(speaker.audio(row), dtype="float32")
    assert rate == 16_000
    return data


# every validation error -------------------------------------------------------------------------------
def _cases(speaker: Speaker) -> dict[str, tuple[bytes | None, dict[str, bytes], dict, int, str]]:
    rows = speaker.rows()
    parts = recordings(speaker, rows)
    ok = manifest_bytes(rows)
    first = speaker.audio(rows[0]).name
    short = {f"s{i}.wav": wav(samples(speaker, r)[:16_000]) for i, r in enumerate(rows[:10])}
    short_rows = [{**r, "audio_filepath": f"s{i}.wav"} for i, r in enumerate(rows[:10])]
    long_audio = np.concatenate([samples(speaker, r) for r in rows])  # ~50 s
    long_rows = [*rows[:11], {**rows[11], "audio_filepath": "long.wav"}]
    long_parts = {**{k: v for k, v in parts.items() if k != speaker.audio(rows[11]).name}, "long.wav": wav(long_audio)}
    many = manifest_bytes([rows[i % 12] for i in range(41)])
    heavy = [{**r, "audio_filepath": "long.wav"} for r in rows[:7]] + rows[7:]  # 7 × 29 s > 200 s
    return {
        "too few utterances": (manifest_bytes(rows[:9]), recordings(speaker, rows[:9]), {}, 400, "too few utterances"),
        "too many utterances": (many, parts, {}, 400, "too many utterances"),
        "too little audio": (manifest_bytes(short_rows), short, {}, 400, "too little audio"),
        "too much audio": (manifest_bytes(heavy), {"long.wav": wav(long_audio[: 29 * 16_000]),
                                                   **recordings(speaker, rows[7:])}, {}, 400, "too much audio"),
        "missing part": (ok, {k: v for k, v in parts.items() if k != first}, {}, 400, "was not uploaded"),
        "part not in manifest": (ok, {**parts, "extra.wav": parts[first]}, {}, 400, "not named by any manifest line"),
        "undecodable recording": (ok, {**parts, first: b"RIFF\x00\x01garbage" * 50}, {}, 400, "manifest line 1"),
        "empty transcript": (manifest_bytes([{**rows[0], "text": "  "}, *rows[1:]]), parts, {}, 400,
                             "transcript is empty"),
        "utterance over 30 s": (manifest_bytes(long_rows), long_parts, {}, 400, "at most 30 s"),
        "bad manifest line": (ok[:-1] + b"\n{not json\n", parts, {}, 400, "manifest line 13: not valid JSON"),
        "language the backbone lacks": (manifest_bytes([{**rows[0], "lang": "de"}, *rows[1:]]), parts, {}, 400,
                                        "language 'de'"),
        "no manifest": (None, parts, {}, 400, "manifest is required"),
        "oversized job": (ok, {**parts, "big.wav": b"\0" * (17 * 1024 * 1024)}, {}, 413, "upload limit"),
        "unknown kind": (ok, parts, {"kind": "dora"}, 400, "kind must be one of glora, lora, saml"),
        "rank above the limit": (ok, parts, {"rank": "64"}, 400, "rank must be between 1 and 16"),
        "rank not a number": (ok, parts, {"rank": "eight"}, 400, "rank must be an integer"),
        "unknown target": (ok, parts, {"targets": "elbows"}, 400, "matches no linear layer"),
        "target the server does not serve": (ok, parts, {"targets": "encoder"}, 400, "does not adapt"),
        "too many epochs": (ok, parts, {"epochs": "500"}, 400, "epochs must be between 1 and 20"),
        "dev share too large": (ok, parts, {"dev": "0.9"}, 400, "dev must be a share"),
        "gate for lora": (ok, parts, {"gate": "output"}, 400, "gate applies to kind glora only"),
        "no name": (ok, parts, {"name": ""}, 400, "name is required"),
        "name with store=false": (ok, parts, {"store": "false"}, 400, "leave name out"),
        "invalid name": (ok, parts, {"name": "../etc"}, 400, "invalid adapter name"),
        "reserved name": (ok, parts, {"name": "jobs"}, 400, "reserved"),
        "unknown field": (ok, parts, {"lr": "0.1"}, 400, "unknown field 'lr'"),
        "store not a flag": (ok, parts, {"store": "maybe"}, 400, "store must be true or false"),
    }


CASE_NAMES = ["too few utterances", "too many utterances", "too little audio", "too much audio", "missing part",
              "part not in manifest", "undecodable recording", "empty transcript", "utterance over 30 s",
              "bad manifest line", "language the backbone lacks", "no manifest", "oversized job", "unknown kind",
              "rank above the limit", "rank not a number", "unknown target", "target the server does not serve",
              "too many epochs", "dev share too large", "gate for lora", "no name", "name with store=false",
              "invalid name", "reserved name", "unknown field", "store not a flag"]


@pytest.fixture(scope="module")
def cases(speaker):
    return _cases(speaker)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_validation_error_is_clear_and_leaves_nothing(jobs_server, cases, case):
    manifest, parts, fields, status, message = cases[case]
    records = sorted((jobs_server.settings.training_jobs_dir / "records").iterdir())
    response = post_job(jobs_server, manifest, parts, fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
    assert jobs_server.work_dirs() == []
    assert sorted((jobs_server.settings.training_jobs_dir / "records").iterdir()) == records


def test_unknown_job_ids_are_not_found(jobs_server):
    for path in (f"{JOBS}/adjob-000000000000000000000000", f"{JOBS}/nonsense", f"{JOBS}/adjob-0/events"):
        response = httpx.get(jobs_server.url + path, headers=jobs_server.headers())
        assert response.status_code == 404 and "does not exist" in response.json()["error"]["message"]


# one real job (the session's, see jobs_server.trained_job) --------------------------------------------
def test_job_trains_an_adapter_that_loads_and_changes_the_transcription(jobs_server, speaker, trained_job):
    job = trained_job["job"]
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["stored"] and job["result"]["name"] == "alice-voice" and job["result"]["kind"] == "lora"
    assert job["progress"]["fraction"] == 1.0 and job["metrics"]["epochs_run"] == 2
    assert 0 < job["metrics"]["peak_rss_bytes"] < 4 << 30
    data = httpx.get(f"{jobs_server.url}/v1/adapters/alice-voice/content", headers=jobs_server.headers()).content
    assert hashlib.sha256(data).hexdigest() == job["result"]["sha256"]
    adapter = load_adapter(data, expected_backbone=jobs_server.engine.spec)
    assert adapter.kind == "lora" and all(t.startswith("model.decoder.") for t in adapter.targets)
    same = httpx.get(f"{jobs_server.url}{JOBS}/{job['id']}/content", headers=jobs_server.headers()).content
    assert same == data  # stored: the job's download is the stored file, and it stays
    assert httpx.get(f"{jobs_server.url}/v1/adapters/alice-voice", headers=jobs_server.headers()).status_code == 200
    changed = 0
    for row in speaker.rows()[:2]:
        base, _ = transcribe(jobs_server, speaker.audio(row), "tiny.en")
        adapted, _ = transcribe(jobs_server, speaker.audio(row), "alice-voice")
        changed += base != adapted
    assert changed >= 1, "the adapter changed no transcription"


def test_a_plain_request_completes_while_the_job_runs(trained_job):
    text, seconds = trained_job["transcription"]
    assert text.strip() and seconds < 60
    assert trained_job["status_after_transcription"] == "running"


def test_events_stream_the_whole_job_and_resume(jobs_server, trained_job):
    events, job = trained_job["events"], trained_job["job"]
    types = [e["type"] for e in events]
    assert trained_job["ids"] == [e["id"] for e in events] == sorted(e["id"] for e in events)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert types.count("epoch") == 3 and types.count("step") == 4  # epochs 0-2; 2 steps per epoch
    assert events[-1]["job"]["status"] == "succeeded" and events[-1]["type"] == "status"
    fractions = [e["data"]["fraction"] for e in events if e["type"] == "step"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    resumed = EventReader(jobs_server, job["id"], after=events[-3]["id"])
    resumed.run()
    assert [e["id"] for e in resumed.events] == [e["id"] for e in events[-2:]]


def test_recordings_exist_only_while_the_job_runs(jobs_server, speaker, trained_job):
    assert trained_job["work_files"] == [f"{i:05d}.wav" for i in range(12)]
    assert jobs_server.work_dirs() == []
    record = (jobs_server.settings.training_jobs_dir / "records" / f"{trained_job['job']['id']}.json").read_text()
    for row in speaker.rows():
        assert row["text"] not in record and speaker.audio(row).name not in record


def test_a_queued_job_cancels_and_the_tenant_limit_holds(jobs_server, trained_job):
    assert trained_job["queued"]["status"] == "queued"
    assert trained_job["work_dirs_with_queued"] == 2
    third = trained_job["third"]
    assert third.status_code == 429 and "SPLITASR_TRAIN_MAX_JOBS_PER_TENANT" in third.json()["error"]["message"]
    assert trained_job["cancelled"]["status"] == "cancelled"
    assert trained_job["work_dirs_after_cancel"] == 1
    again = httpx.post(f"{jobs_server.url}{JOBS}/{trained_job['queued']['id']}/cancel", headers=jobs_server.headers())
    assert again.status_code == 400 and "already cancelled" in again.json()["error"]["message"]
    names = [a["id"] for a in httpx.get(f"{jobs_server.url}/v1/adapters", headers=jobs_server.headers()).json()["data"]]
    assert "alice-2" not in names


def test_a_tenant_sees_only_its_own_jobs(jobs_server, trained_job):
    job_id = trained_job["job"]["id"]
    bob = jobs_server.headers("bob")
    for method, path in (("GET", f"{JOBS}/{job_id}"), ("POST", f"{JOBS}/{job_id}/cancel"),
                         ("GET", f"{JOBS}/{job_id}/events"), ("GET", f"{JOBS}/{job_id}/content"),
                         ("GET", "/v1/adapters/alice-voice/content")):
        response = httpx.request(method, jobs_server.url + path, headers=bob)
        assert response.status_code == 404, (path, response.text)
    assert httpx.get(f"{jobs_server.url}{JOBS}", headers=bob).json()["data"] == []
    mine = httpx.get(f"{jobs_server.url}{JOBS}", headers=jobs_server.headers()).json()
    assert job_id in [j["id"] for j in mine["data"]]
    page = httpx.get(f"{jobs_server.url}{JOBS}?limit=1", headers=jobs_server.headers()).json()
    assert len(page["data"]) == 1 and page["has_more"]
    rest = httpx.get(f"{jobs_server.url}{JOBS}?limit=100&after={page['data'][0]['id']}",
                     headers=jobs_server.headers()).json()
    assert {j["id"] for j in rest["data"]} | {page["data"][0]["id"]} == {j["id"] for j in mine["data"]}


def test_an_archive_carries_the_manifest_and_recordings(jobs_server, speaker):
    rows = speaker.rows()
    members = {"manifest.jsonl": manifest_bytes(rows),
               **{r["audio_filepath"]: speaker.audio(r).read_bytes() for r in rows}}

    def post(archive: bytes, **fields) -> httpx.Response:
        return httpx.post(f"{jobs_server.url}{JOBS}", headers=jobs_server.headers(), timeout=120,
                          files={"archive": ("enroll.zip", archive, "application/zip")},
                          data={"name": "z", "epochs": "1", **fields})

    # 1 s of each recording: the manifest is read, every line finds its recording and decodes, then the
    # total is too short (the last check before a job is queued)
    short = {**members, **{r["audio_filepath"]: wav(samples(speaker, r)[:16_000]) for r in rows}}
    assert "too little audio: the recordings hold 12.0 s" in post(zip_bytes(short)).json()["error"]["message"]
    missing = {k: v for k, v in members.items() if k != rows[3]["audio_filepath"]}
    assert "manifest line 4" in post(zip_bytes(missing)).json()["error"]["message"]
    assert "one manifest" in post(zip_bytes({k: v for k, v in members.items() if k != "manifest.jsonl"})).json()[
        "error"]["message"]
    assert "not a readable zip" in post(b"PK\x03\x04 not really").json()["error"]["message"]
    bomb = zip_bytes({"manifest.jsonl": manifest_bytes(rows), "zeros.wav": b"\0" * (20 * 1024 * 1024)})  # ~20 KiB zipped
    response = post(bomb)
    assert response.status_code == 413 and "inflates" in response.json()["error"]["message"]
    both = httpx.post(f"{jobs_server.url}{JOBS}", headers=jobs_server.headers(), data={"name": "z"},
                      files=[("archive", ("a.zip", zip_bytes(members))), ("manifest", ("m.jsonl", manifest_bytes(rows)))])
    assert both.status_code == 400 and "not both" in both.json()["error"]["message"]
    assert jobs_server.work_dirs() == []
