"""HTTP-level limits of the REST server, against uvicorn configured as ``splitasr serve`` does.

Oversized and unfinished headers, bodies that trickle, unauthenticated uploads, framework errors and
the client address in the access log. Deadlines are short here (header 1.5 s, body 2 s + 1 s per
16 KiB) so the suite stays fast; the defaults are in the README.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import psutil
import pytest

from tests.reliability.conftest import TOKENS, assert_rest_error, assert_serves_others, serve_both

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
PROXY = "127.0.0.9"


@pytest.fixture(scope="module")
def service(backbone_cache_dir, tmp_path_factory):
    with serve_both(backbone_cache_dir, tmp_path_factory.mktemp("http-limits"), http_header_timeout_s=HEADER_TIMEOUT_S,
                    http_body_timeout_s=BODY_TIMEOUT_S, trusted_proxies=f"{PROXY},10.0.0.0/8",
                    auth_failures_per_minute=0) as running:
        yield running


def connect(service, source: str = "127.0.0.1") -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
    return sock


def read_response(sock: socket.socket, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Status, headers and body of one response (the server closes after these errors)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def assert_error_shape(body: bytes, *words: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    for word in words:
        assert word.lower() in error["message"].lower(), error


# -- headers ------------------------------------------------------------------------------------------

def test_oversized_unfinished_headers_get_431_and_hold_no_memory(service, goforward):
    """8 connections each start a 32 MiB header: each is refused after 16 KiB, nothing is held."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    socks, sent = [], []
    for _ in range(8):
        sock = connect(service)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        total = 0
        chunk = b"a" * 65536
        try:
            while total < 32 << 20:
                sock.sendall(chunk)
                total += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sent.append(total)
        socks.append(sock)
    for sock in socks:
        try:
            status, headers, body = read_response(sock)
        except ConnectionResetError:  # the server closed before our unread bytes drained
            continue
        assert status == 431 and headers["connection"] == "close"
        assert_error_shape(body, "headers exceed 16384 bytes")
        sock.close()
    assert max(sent) < 8 << 20, f"the server kept reading: {sent}"
    assert process.memory_info().rss - rss_before < 64 << 20
    assert_serves_others(service, goforward)


def test_headers_that_never_finish_are_cut_off(service):
    silent, trickle = connect(service), connect(service)
    start = time.monotonic()

    def drip():
        with contextlib.suppress(OSError):  # the server closed first
            for byte in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
                trickle.sendall(bytes([byte]))
                time.sleep(0.2)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    for sock in (silent, trickle):
        status, headers, body = read_response(sock)
        assert status == 408 and headers["connection"] == "close"
        assert_error_shape(body, "headers not received within 1.5 s")
        assert closed(sock)
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 3


# -- bodies -------------------------------------------------------------------------------------------

def test_a_body_sent_at_one_byte_per_second_is_cut_off(service, goforward):
    """10 authenticated uploads that trickle are closed with 408; a normal upload meanwhile works."""
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n").encode()
    socks = [connect(service) for _ in range(10)]
    stop = threading.Event()

    def drip(sock):
        with contextlib.suppress(OSError):  # the server closed first
            sock.sendall(head + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n')
            while not stop.is_set():
                sock.sendall(b"x")
                time.sleep(0.5)

    threads = [threading.Thread(target=drip, args=(s,), daemon=True) for s in socks]
    start = time.monotonic()
    for t in threads:
        t.start()
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)},
                   data={"model": "tiny.en"}, headers=service.headers("carol"), timeout=120)
    assert r.status_code == 200, r.text
    for sock in socks:
        status, _, body = read_response(sock, timeout=BODY_TIMEOUT_S + 10)
        assert status == 408, body
        assert_error_shape(body, "request body too slow")
        assert closed(sock)
    elapsed = time.monotonic() - start
    stop.set()
    assert elapsed < BODY_TIMEOUT_S + 8, elapsed


# -- auth before the body ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/adapters"])
def test_an_unauthenticated_20_mib_upload_is_refused_unread(service, path):
    length = 20 << 20
    sock = connect(service)
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode())
    sock.sendall(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.flac\"\r\n\r\n" + bytes(65536))
    status, headers, body = read_response(sock, timeout=10)
    assert status == 401 and headers["connection"] == "close"
    assert_error_shape(body, "missing api key")
    assert closed(sock), "the server must not wait for (or read) the remaining 20 MiB"


def many_parts(count: int) -> tuple[bytes, str]:
    parts = [f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(count)]
    return ("".join(parts) + "--b--\r\n").encode(), "multipart/form-data; boundary=b"


def test_10002_parts_get_401_without_a_key_and_400_in_shape_with_one(service):
    body, content_type = many_parts(10_002)
    url = f"{service.url}/v1/audio/transcriptions"
    r = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=60)
    assert_rest_error(r, 401, "api key")
    r = httpx.post(url, content=body, headers={"Content-Type": content_type, **service.headers()}, timeout=60)
    assert_rest_error(r, 400, "fields")
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


# -- framework errors in the documented shape --------------------------------------------------------

def test_framework_errors_use_the_openai_error_shape(service, goforward):
    h = service.headers()
    r = httpx.get(f"{service.url}/v1/nope", headers=h)
    assert_rest_error(r, 404, "no such route: GET /v1/nope")
    r = httpx.get(f"{service.url}/v1/nope")  # no key: still a 404 (no route), still the shape
    assert_rest_error(r, 404, "no such route")
    r = httpx.delete(f"{service.url}/v1/audio/transcriptions", headers=h)
    assert_rest_error(r, 405, "method DELETE is not allowed", "POST")
    assert r.headers["allow"] == "POST"
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files={"file": ("a.flac", goforward)}, headers=h)
    assert_rest_error(r, 400, "model")
    assert r.json()["error"]["param"] == "model"
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", content=b"{}", headers={**h, "Content-Type": "text/json"})
    assert_rest_error(r, 400, "file")
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    sock = connect(service)
    sock.sendall(b"GARBAGE / HTTP/9\r\n\r\n")
    status, _, body = read_response(sock)
    assert status == 400
    assert_error_shape(body, "malformed http request")


# -- the client address ------------------------------------------------------------------------------

def access_lines(caplog, at_least: int = 0) -> list[dict]:
    """The access log records so far (waiting for ``at_least``: a line is written just after the response)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [vars(r) for r in caplog.records if r.name == "splitasr.access"]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_access_log_names_the_client_and_trusts_only_configured_proxies(service, caplog):
    caplog.set_level("INFO", logger="splitasr.access")
    spoof = {"X-Forwarded-For": "203.0.113.7", **service.headers()}
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as direct:
        direct.get(f"{service.url}/v1/models?who=direct", headers=spoof)
    with httpx.Client(transport=httpx.HTTPTransport(local_address=PROXY)) as proxy:
        proxy.get(f"{service.url}/v1/models?who=proxy", headers={**spoof, "X-Forwarded-For": "198.51.100.4, 10.1.2.3"})
    lines = access_lines(caplog, at_least=2)
    clients = [line["client"] for line in lines if line["path"] == "/v1/models"]
    # a client that is not a trusted proxy cannot choose its address; a trusted proxy's chain is
    # followed back past other trusted hops (10.0.0.0/8) to the first untrusted one
    assert clients[-2:] == ["127.0.0.1", "198.51.100.4"], clients
    messages = [r.getMessage() for r in caplog.records if r.name == "splitasr.access"]
    assert any(m.startswith("198.51.100.4 GET /v1/models 200") for m in messages), messages
    # a refused request is logged with its address too
    httpx.get(f"{service.url}/v1/models", headers={"Authorization": "Bearer wrong-wrong-wrong-wrong"})
    lines = access_lines(caplog, 3)
    assert any(line["client"] == "127.0.0.1" and line["status"] == 401 for line in lines), lines


