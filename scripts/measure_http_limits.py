"""HTTP abuse against a real `splitasr serve` on 127.0.0.1, as docs/reliability.md reports it: default
limits, except that the failed-auth block is off so that every unauthenticated case stays a 401.
8 unfinished 32 MiB headers (server RSS, answers), one 16 MiB header, 50 bodies at 1 byte/s for
45 s, a 20 MiB upload without a key, 10 002 parts without a key, an unknown route, a wrong method,
and the access-log line of a failed login. Prints JSON. Takes about 2 minutes.

    python scripts/measure_http_limits.py WORK_DIR PORT
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil

port = int(sys.argv[2]); root = sys.argv[1]
env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITASR_")}
env.update(SPLITASR_CACHE_DIR=os.path.expanduser("~/.cache/splitasr"), SPLITASR_STORE_DIR=f"{root}/store", SPLITASR_PORT=str(port),
           SPLITASR_GRPC_PORT="0", SPLITASR_API_KEYS="measure-token-0123456789:alice", SPLITASR_LOG_FORMAT="json",
           SPLITASR_AUTH_FAILURES_PER_MINUTE="0", OMP_NUM_THREADS="1")
os.makedirs(root, exist_ok=True)
log = open(f"{root}/server.log", "wb")
proc = subprocess.Popen([sys.executable, "-m", "splitasr.cli", "serve"], env=env, stderr=log, stdout=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200: break
    except httpx.TransportError: pass
    time.sleep(0.3)
ps = psutil.Process(proc.pid); out = {}
def rss(): return ps.memory_info().rss / 2**20
def conn(): return socket.create_connection(("127.0.0.1", port), timeout=120)
def status_of(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        d = sock.recv(200)
        return d.split(b"\r\n")[0].decode() if d else "closed"
    except TimeoutError: return "open (no answer)"
    except OSError as e: return f"closed ({type(e).__name__})"
# (a) 8 x 32 MiB unfinished headers
base = rss(); socks = []; sent = []
def fill(s):
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: "); n = 0
    try:
        while n < 32 << 20: s.sendall(b"a" * 65536); n += 65536
    except OSError: pass
    sent.append(n)
for _ in range(8):
    s = conn(); socks.append(s)
ths = [threading.Thread(target=fill, args=(s,)) for s in socks]; [t.start() for t in ths]; [t.join(120) for t in ths]
time.sleep(1)
out["8x32MiB_unfinished_headers"] = {"rss_delta_mib": round(rss() - base, 1), "sent_mib": [round(x / 2**20, 2) for x in sent],
                                     "answers": [status_of(s, 2) for s in socks]}
for s in socks: s.close()
# (b) 16 MiB complete header
s = conn()
try: s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer measure-token-0123456789\r\nX-Pad: " + b"a" * (16 << 20) + b"\r\n\r\n")
except OSError as e: print("16MiB send:", type(e).__name__, file=sys.stderr)
out["16MiB_header"] = status_of(s, 30); s.close()
# (c) 50 connections sending a body at 1 byte/s for 45 s
head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer measure-token-0123456789\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n')
slow = [conn() for _ in range(50)]; closed_at = {}
t0 = time.monotonic()
for s in slow: s.sendall(head); s.setblocking(False)
while time.monotonic() - t0 < 45:
    for i, s in enumerate(slow):
        if i in closed_at: continue
        try:
            d = s.recv(300)
            if d == b"" or d: closed_at[i] = (round(time.monotonic() - t0, 1), d.split(b"\r\n")[0].decode() if d else "closed")
        except BlockingIOError: pass
        except OSError: closed_at[i] = (round(time.monotonic() - t0, 1), "reset")
        if i not in closed_at:
            try: s.send(b"x")
            except OSError: closed_at[i] = (round(time.monotonic() - t0, 1), "reset")
    time.sleep(1)
out["50_conns_body_1_byte_per_s_45s"] = {"closed_by_server": len(closed_at), "first_close_s": min((v[0] for v in closed_at.values()), default=None),
                                         "answers": sorted({v[1] for v in closed_at.values()})}
for s in slow: s.close()
# (d) 20 MiB unauthenticated upload
s = conn(); length = 20 << 20
s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n".encode())
pre = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n'; post = b"\r\n--b--\r\n"
body = pre + bytes(length - len(pre) - len(post)) + post; sent = 0; t0 = time.monotonic(); s.setblocking(False); answer = None
while sent < len(body):
    try:
        d = s.recv(300)
        if d: answer = d.split(b"\r\n")[0].decode(); break
        answer = "closed"; break
    except BlockingIOError: pass
    except OSError as e: answer = type(e).__name__; break
    try: sent += s.send(body[sent: sent + 65536])
    except BlockingIOError: time.sleep(0.001)
    except OSError as e: answer = type(e).__name__; break
if answer is None:
    s.setblocking(True); s.settimeout(60); answer = s.recv(300).split(b"\r\n")[0].decode()
out["20MiB_upload_without_key"] = {"answer": answer, "body_mib_sent_before_answer": round(sent / 2**20, 2), "s": round(time.monotonic() - t0, 2)}
s.close()
# (e) 10 002 parts without a key
parts = "".join(f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(10002)) + "--b--\r\n"
r = httpx.post(f"{url}/v1/audio/transcriptions", content=parts.encode(), headers={"Content-Type": "multipart/form-data; boundary=b"}, timeout=60)
out["10002_parts_no_key"] = [r.status_code, r.text[:120]]
H = {"Authorization": "Bearer measure-token-0123456789"}
r = httpx.get(f"{url}/v1/nope", headers=H); out["unknown_route"] = [r.status_code, r.text[:120]]
r = httpx.delete(f"{url}/v1/audio/transcriptions", headers=H); out["wrong_method"] = [r.status_code, r.text[:160]]
r = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong-wrong-wrong-wrong"})
proc.terminate(); proc.wait(60); log.close()
lines = [json.loads(l) for l in open(f"{root}/server.log") if l.startswith("{")]
acc = [l for l in lines if l.get("logger") == "splitasr.access" and l.get("status") == 401]
out["access_log_401_line"] = acc[-1] if acc else None
print(json.dumps(out, indent=1))
