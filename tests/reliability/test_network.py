"""The device client over a bad network: the server runs in its own network namespace behind a veth
pair whose both ends are impaired (``tc netem`` delay, jitter and loss; where the kernel has no netem,
a ``tbf`` rate limit for queueing delay plus random drops with nftables). Enrolment (upload), whole-file
recognition and streaming must complete; a stream whose connection is reset mid-way must reconnect and
still give the whole transcript. The test removes everything it created and skips where it cannot run
(not root, no ``ip``/``tc``, no permission to make namespaces)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time

import pytest

from splitasr_device import SplitASRClient
from splitasr_device.retry import RetryPolicy
from tests.adapter_factory import adapter_bytes
from tests.reliability.conftest import TOKENS, spawn

pytestmark = pytest.mark.slow

DELAY_MS, JITTER_MS, LOSS_PCT = 60, 30, 3


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class Namespace:
    """A network namespace ``name`` joined to this one by a veth pair on 10.213.N.0/30."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name = f"splitasr-test-{os.getpid()}"
        self.host_if, self.ns_if = f"sah{os.getpid() % 100000}", f"san{os.getpid() % 100000}"
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.impairment = ""

    def ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    def create(self) -> None:
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.ns("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.ns("ip", "link", "set", self.ns_if, "up")
        self.ns("ip", "link", "set", "lo", "up")

    def impair(self) -> None:
        netem = ["netem", "delay", f"{DELAY_MS}ms", f"{JITTER_MS}ms", "distribution", "normal", "loss", f"{LOSS_PCT}%"]
        if sh("tc", "qdisc", "add", "dev", self.host_if, "root", *netem, check=False).returncode == 0:
            self.ns("tc", "qdisc", "add", "dev", self.ns_if, "root", *netem)
            self.impairment = f"netem delay {DELAY_MS} ms ± {JITTER_MS} ms, loss {LOSS_PCT}% each way"
            return
        # no netem in this kernel: a slow link (queueing delay that varies with load) and random loss
        tbf = ["tbf", "rate", "4mbit", "burst", "8kb", "latency", "200ms"]
        sh("tc", "qdisc", "add", "dev", self.host_if, "root", *tbf)
        self.ns("tc", "qdisc", "add", "dev", self.ns_if, "root", *tbf)
        self.impairment = "tbf 4 Mbit/s (200 ms queue) each way"
        if shutil.which("nft"):
            self.ns("nft", "add", "table", "inet", "impair")
            for hook in ("input", "output"):
                self.ns("nft", "add", "chain", "inet", "impair", hook, f"{{ type filter hook {hook} priority 0; }}")
                self.ns("nft", "add", "rule", "inet", "impair", hook, "meta", "l4proto", "tcp",
                        "numgen", "random", "mod", "100", "<", str(LOSS_PCT), "drop")
            self.impairment += f", nftables random drop {LOSS_PCT}% each way"

    def reset_connections(self, port: int, seconds: float) -> bool:
        """Answer every packet to ``port`` with a TCP reset for ``seconds`` (a dropped link)."""
        if not shutil.which("nft"):
            return False
        self.ns("nft", "add", "table", "inet", "outage")
        self.ns("nft", "add", "chain", "inet", "outage", "input", "{ type filter hook input priority -10; }")
        self.ns("nft", "add", "rule", "inet", "outage", "input", "tcp", "dport", str(port), "reject", "with",
                "tcp", "reset")
        time.sleep(seconds)
        self.ns("nft", "delete", "table", "inet", "outage")
        return True

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)  # takes the veth pair (and its qdiscs) with it
        sh("ip", "link", "del", self.host_if, check=False)


@pytest.fixture
def namespace():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("needs root, iproute2 (ip) and tc")
    net = Namespace()
    try:
        net.create()
    except subprocess.CalledProcessError as exc:
        net.delete()
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        net.impair()
    except subprocess.CalledProcessError as exc:
        net.delete()
        pytest.skip(f"cannot impair the link here: {exc.stderr.strip()}")
    yield net
    net.delete()
    assert net.name not in sh("ip", "netns", "list").stdout


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_device_client_over_an_impaired_link(namespace, tiny_backbone, cache_root, tmp_path, real_speech):
    from splitasr.adapters import BackboneSpec

    spec = BackboneSpec.from_model(tiny_backbone.name, tiny_backbone.model)
    adapter_file = tmp_path / "me.safetensors"
    adapter_file.write_bytes(adapter_bytes(spec, "lora", seed=80))
    server = spawn(cache_root, tmp_path / "store", host=namespace.ns_ip, timeout=300,
                   prefix=["ip", "netns", "exec", namespace.name])
    counter = Counter()
    device_log = logging.getLogger("splitasr_device")
    device_log.addHandler(counter)
    device_log.setLevel(logging.DEBUG)
    print(f"\nimpairment: {namespace.impairment}")
    try:
        retry = RetryPolicy(attempts=30, base_delay_s=0.2, max_delay_s=2.0)
        with SplitASRClient(server.grpc_address, token=TOKENS["alice"], retry=retry, timeout=120) as client:
            started = time.monotonic()
            enrolled = client.enroll(adapter_file)
            upload_s = time.monotonic() - started
            assert enrolled.uploaded_bytes == adapter_file.stat().st_size
            assert "forward" in client.transcribe(real_speech[-1]["path"], adapter=enrolled).text.lower()
            started = time.monotonic()
            finals = [u.text for u in client.stream(real_speech[0]["path"], adapter=enrolled) if u.is_final]
            stream_s = time.monotonic() - started
            assert "dashwood" in " ".join(finals).lower(), finals
            # a realtime stream whose connection is reset half-way: it reconnects and resumes
            updates: list = []
            streaming = threading.Thread(target=lambda: updates.extend(
                client.stream(real_speech[0]["path"], adapter=enrolled, realtime=True)))
            streaming.start()
            time.sleep(3.5)
            outage = namespace.reset_connections(server.grpc_port, 1.5)
            streaming.join(180)
            assert not streaming.is_alive()
            text = " ".join(u.text for u in updates if u.is_final).lower()
            assert "dashwood" in text, text
            dropped = [m for m in counter.messages if "stream dropped" in m]
            if outage:
                assert dropped, "the reset must have dropped the stream (and the client resumed it)"
            print(f"upload {adapter_file.stat().st_size} B in {upload_s:.1f} s; 7 s stream in {stream_s:.1f} s; "
                  f"reconnects {len(dropped)}; retries {sum('retrying' in m for m in counter.messages)}")
    finally:
        device_log.removeHandler(counter)
        with contextlib.suppress(Exception):
            server.stop()
