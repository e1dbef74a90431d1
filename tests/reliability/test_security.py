"""Security on both transports: authentication, tenant isolation by name and by hash, secrets and
audio kept out of the logs, and TLS (HTTPS and gRPC) with a self-signed certificate made here."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import ssl
import threading
import time

import grpc
import httpx
import pytest

from splitasr.observability import JsonFormatter
from splitasr_device import SplitASRClient
from splitasr_device._proto import adapters_pb2 as apb
from splitasr_device._proto import recognizer_pb2 as pb
from splitasr_device._proto import recognizer_pb2_grpc
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import TOKENS, assert_grpc_error, assert_rest_error, serve_both, spawn

NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
WRONG_SECRET = "wrong-but-secret-token-5b8c1e0f"


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    # 120 wrong keys in a row from one address: the per-address block is test_keys_and_auth.py's subject
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("security"), auth_failures_per_minute=0) as running:
        yield running


@pytest.fixture(scope="module")
def alice_voice(service) -> tuple[str, bytes]:
    data = adapter_bytes(service.engine.spec, "lora", seed=40)
    requests = [apb.UploadRequest(header=apb.UploadHeader(name="alice-voice", sha256=hashlib.sha256(data).hexdigest(),
                                                          size=len(data))), apb.UploadRequest(chunk=data)]
    info = service.adapters.Upload(iter(requests), metadata=service.metadata("alice"), timeout=60)
    return info.sha256, data


# -- authentication ---------------------------------------------------------------------------------

BAD_AUTH = [None, "", "Bearer", "Basic YWxpY2U6cGFzc3dvcmQ=", f"Bearer {WRONG_SECRET}", f"bearer  {WRONG_SECRET}",
            f"Bearer {TOKENS['alice']}x", f"Bearer {TOKENS['alice'][:-1]}", f"Token {TOKENS['alice']}x",
            "Bearer " + "a" * 4096]


def test_rest_refuses_missing_and_wrong_keys_on_every_route(service, goforward):
    routes = [("GET", "/v1/models", {}), ("GET", "/v1/adapters", {}), ("GET", "/v1/adapters/alice-voice", {}),
              ("DELETE", "/v1/adapters/alice-voice", {}),
              ("POST", "/v1/adapters", {"files": {"file": ("a.safetensors", b"x")}, "data": {"name": "n"}}),
              ("POST", "/v1/audio/transcriptions", {"files": {"file": ("a.flac", goforward)},
                                                    "data": {"model": "tiny.en"}})]
    for auth in BAD_AUTH:
        headers = {} if auth is None else {"Authorization": auth}
        for method, path, kw in routes:
            r = httpx.request(method, f"{service.url}{path}", headers=headers, timeout=30, **kw)
            assert_rest_error(r, 401, "api key")
    # probes and metrics stay open (for orchestrators), and say nothing about tenants
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    assert "alice" not in httpx.get(f"{service.url}/metrics").text


def test_grpc_refuses_missing_and_wrong_keys_on_every_method(service, goforward):
    stream_requests = [pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000))), pb.StreamingRecognizeRequest(
        audio=bytes(3200))]
    for auth in BAD_AUTH:
        md = () if auth is None else (("authorization", auth),)
        calls = [
            lambda md=md: service.adapters.List(apb.ListAdaptersRequest(), metadata=md),
            lambda md=md: service.adapters.Stat(apb.StatRequest(name="alice-voice"), metadata=md),
            lambda md=md: service.adapters.Delete(apb.DeleteAdapterRequest(name="alice-voice"), metadata=md),
            lambda md=md: service.adapters.Upload(iter([apb.UploadRequest(header=apb.UploadHeader(
                name="n", sha256="0" * 64, size=1)), apb.UploadRequest(chunk=b"x")]), metadata=md),
            lambda md=md: service.recognizer.Recognize(pb.RecognizeRequest(audio=goforward), metadata=md),
            lambda md=md: service.recognizer.StreamingRecognize(iter(stream_requests), metadata=md),
        ]
        for call in calls:
            assert_grpc_error(call, UNAUTHENTICATED, "api key")


# -- isolation --------------------------------------------------------------------------------------

def test_another_tenant_cannot_reach_an_adapter_by_name_or_hash(service, alice_voice, goforward):
    sha, _ = alice_voice
    unknown = "ab" * 32
    bob, md = service.headers("bob"), service.metadata("bob")
    for ref in ("alice-voice", sha):
        assert_rest_error(httpx.get(f"{service.url}/v1/adapters/{ref}", headers=bob), 404)
        assert_rest_error(httpx.delete(f"{service.url}/v1/adapters/{ref}", headers=bob), 404)
        r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                       data={"model": ref}, headers=bob, timeout=60)
        assert_rest_error(r, 404, "does not exist")
    assert "alice-voice" not in httpx.get(f"{service.url}/v1/models", headers=bob).text
    assert sha not in httpx.get(f"{service.url}/v1/adapters", headers=bob).text
    assert_grpc_error(lambda: service.adapters.Stat(apb.StatRequest(name="alice-voice"), metadata=md), NOT_FOUND)
    assert_grpc_error(lambda: service.adapters.Delete(apb.DeleteAdapterRequest(name="alice-voice"), metadata=md),
                      NOT_FOUND)
    assert not service.adapters.List(apb.ListAdaptersRequest(), metadata=md).adapters
    for ref in (pb.AdapterRef(sha256=sha), pb.AdapterRef(name="alice-voice")):
        config = pb.RecognitionConfig(adapter=ref)
        assert_grpc_error(lambda config=config: service.recognizer.Recognize(
            pb.RecognizeRequest(config=config, audio=goforward), metadata=md), NOT_FOUND)
        stream_config = pb.RecognitionConfig(adapter=ref, encoding=pb.LINEAR16, sample_rate_hz=16000)
        assert_grpc_error(lambda c=stream_config: service.recognizer.StreamingRecognize(iter([
            pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=c))]), metadata=md),
            NOT_FOUND)
    # no existence oracle: another tenant's hash reads exactly like a hash nobody has
    theirs = assert_grpc_error(lambda: service.adapters.Stat(apb.StatRequest(sha256=sha), metadata=md), NOT_FOUND)
    nobody = assert_grpc_error(lambda: service.adapters.Stat(apb.StatRequest(sha256=unknown), metadata=md), NOT_FOUND)
    assert theirs.replace(sha, unknown) == nobody
    theirs = httpx.get(f"{service.url}/v1/adapters/{sha}", headers=bob).json()
    nobody = httpx.get(f"{service.url}/v1/adapters/{unknown}", headers=bob).json()
    assert theirs["error"]["message"].replace(sha, unknown) == nobody["error"]["message"]


def test_the_same_bytes_under_two_tenants_stay_independent(service, alice_voice, goforward):
    """Content addressing shares one blob; bob deleting his copy must not take alice's away."""
    sha, data = alice_voice
    r = httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", data)}, data={"name": "copy"},
                   headers=service.headers("bob"), timeout=60)
    assert r.status_code == 201 and r.json()["sha256"] == sha
    other = adapter_bytes(service.engine.spec, "glora", seed=41)
    r = httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", other)},
                   data={"name": "alice-voice"}, headers=service.headers("bob"), timeout=60)
    assert r.status_code == 201 and r.json()["sha256"] != sha
    for name in ("copy", "alice-voice"):
        assert httpx.delete(f"{service.url}/v1/adapters/{name}", headers=service.headers("bob")).status_code == 200
    assert service.engine.store.blob_path(sha).exists()
    assert service.adapters.Stat(apb.StatRequest(name="alice-voice"), metadata=service.metadata("alice")).sha256 == sha
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                   data={"model": "alice-voice"}, headers=service.headers("alice"), timeout=60)
    assert r.status_code == 200 and "forward" in r.json()["text"].lower()


# -- logs -------------------------------------------------------------------------------------------

CLIENT_LOGGERS = {"httpx", "httpcore", "hpack", "splitasr_device"}


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in CLIENT_LOGGERS:  # this test's own HTTP client, not the server
            return
        self.lines.append(self.json.format(record))
        self.lines.append(repr(record.__dict__))


def test_tokens_audio_and_transcripts_never_reach_the_logs(service, alice_voice, goforward):
    capture = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        for token in (TOKENS["alice"], WRONG_SECRET):
            headers = {"Authorization": f"Bearer {token}"}
            md = (("authorization", f"Bearer {token}"),)
            httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                       data={"model": "alice-voice", "prompt": "secret prompt words"}, headers=headers, timeout=60)
            httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward[:300])},
                       data={"model": "tiny.en"}, headers=headers, timeout=60)
            httpx.post(f"{service.url}/v1/adapters", files={"file": ("a.safetensors", b"junk" * 10)},
                       data={"name": "x"}, headers=headers, timeout=60)
            for call in (lambda md=md: service.recognizer.Recognize(pb.RecognizeRequest(audio=goforward), metadata=md),
                         lambda md=md: service.adapters.List(apb.ListAdaptersRequest(), metadata=md)):
                try:
                    call()
                except grpc.RpcError:
                    pass
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
    text = "\n".join(capture.lines)
    assert capture.lines, "the requests above must have logged something"
    for secret in (*TOKENS.values(), WRONG_SECRET, "secret prompt words", "forward ten", "Go forward"):
        assert secret.lower() not in text.lower(), f"{secret!r} was logged"
    assert goforward[100:132].hex() not in text and repr(goforward[100:132]) not in text


# -- TLS --------------------------------------------------------------------------------------------

def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def check_tls(https: str, grpc_port: int, cert, other_cert, goforward, real_speech) -> None:
    """Verified HTTPS and gRPC-TLS work; plain text, and a certificate the client does not trust, fail."""
    trust = ssl.create_default_context(cafile=str(cert))
    r = httpx.post(f"{https}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                   data={"model": "tiny.en"}, headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                   verify=trust, timeout=60)
    assert r.status_code == 200 and "forward" in r.json()["text"].lower()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https}/healthz", verify=ssl.create_default_context(cafile=str(other_cert)))
    with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS port gets no answer
        httpx.get(https.replace("https://", "http://") + "/healthz", timeout=5)
    with SplitASRClient(f"localhost:{grpc_port}", token=TOKENS["alice"], root_cert=cert) as client:
        assert client.health() == "SERVING"
        assert "forward" in client.transcribe(real_speech[-1]["path"]).text.lower()
    for channel in (grpc.insecure_channel(f"127.0.0.1:{grpc_port}"),
                    grpc.secure_channel(f"localhost:{grpc_port}", grpc.ssl_channel_credentials(other_cert.read_bytes()))):
        with channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)
            assert_grpc_error(lambda stub=stub: stub.Recognize(pb.RecognizeRequest(audio=goforward), timeout=5,
                              metadata=(("authorization", f"Bearer {TOKENS['alice']}"),)), grpc.StatusCode.UNAVAILABLE)


def test_https_and_grpc_tls(service, tmp_path, goforward, real_speech):
    """The module's engine behind a second REST app and gRPC server, both on TLS, configured as
    ``splitasr serve`` configures them (``uvicorn_config``)."""
    import uvicorn

    from splitasr.api.rest.app import create_app
    from splitasr.api.rest.protocol import uvicorn_config
    from splitasr.api.rpc.server import BackgroundGrpc
    from tests.integration.conftest import free_port

    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed(tmp_path / "other")
    settings = service.settings.model_copy(update={"port": free_port(), "tls_cert": cert, "tls_key": key,
                                                   "grpc_tls_cert": cert, "grpc_tls_key": key})
    config = uvicorn_config(create_app(settings, service.engine), settings)
    config.lifespan = "off"  # the engine belongs to the module's server: this app must not close it
    rest = uvicorn.Server(config)
    thread = threading.Thread(target=rest.run, daemon=True)
    thread.start()
    secure_grpc = BackgroundGrpc(settings, service.engine)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while not rest.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"https://127.0.0.1:{settings.port}/readyz", verify=trust).status_code == 200
        check_tls(f"https://127.0.0.1:{settings.port}", secure_grpc.handle.port, cert, other_cert, goforward,
                  real_speech)
    finally:
        secure_grpc.stop(0.5)
        rest.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_splitasr_serve_with_tls_from_the_environment(cache_root, tmp_path, goforward, real_speech):
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed(tmp_path / "other")  # a certificate the server does not have
    trust = ssl.create_default_context(cafile=str(cert))
    server = spawn(cache_root, tmp_path / "store", scheme="https", verify=trust,
                   env={"SPLITASR_TLS_CERT": str(cert), "SPLITASR_TLS_KEY": str(key), "SPLITASR_LOG_LEVEL": "debug",
                        "SPLITASR_GRPC_TLS_CERT": str(cert), "SPLITASR_GRPC_TLS_KEY": str(key)})
    try:
        check_tls(f"https://127.0.0.1:{server.port}", server.grpc_port, cert, other_cert, goforward, real_speech)
    finally:
        server.stop()
    log = server.log.read_text()
    assert '"level": "debug"' in log.lower() or "DEBUG" in log
    assert TOKENS["alice"] not in log
