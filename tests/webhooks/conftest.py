"""Fixtures of the webhook suite (run it with `bash tests/webhooks.sh`).

Everything listens on 127.0.0.1, on free ports, and is stopped by the fixture that started it:

- `latchkey`: `latchkey serve` (`LATCHKEY_BIN`, default target/debug/latchkey) on the embedded
  backend, with a temporary data directory kept across restarts, a fixed JWT secret, loopback
  webhook URLs allowed (`LATCHKEY_ALLOW_LOOPBACK_PROVIDERS`) and a retry schedule of 1 s, 1 s
  (`LATCHKEY_WEBHOOK_RETRY_SCHEDULE=1,1`: three attempts). `kill()` ends it with SIGKILL (no
  shutdown of any kind), `start()` runs it again over the same data.
- `receiver`: an http.server that verifies every request with the Standard Webhooks reference
  library (`standardwebhooks.Webhook(secret).verify`) as it arrives and records it; it answers
  the statuses a test scripts (then 200), can hold a request unanswered, and can go down and
  come back up on the same port.

Every test works in an organization of its own. Nothing sleeps for a fixed time: tests poll.
"""

import http.server
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("LATCHKEY_BIN", TARGET / "debug" / "latchkey"))
LOGS = TARGET / "webhooks"
START_TIMEOUT = 30.0

for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = "127.0.0.1,localhost"


def poll(check, what, timeout=20.0, interval=0.05):
    """Calls `check` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            result = check()
            if result:
                return result
        except requests.RequestException as e:
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s (last error: {last})")
        time.sleep(interval)


class Latchkey:
    """`latchkey serve` over one data directory, which outlives the process between restarts."""

    def __init__(self, name):
        if not BIN.is_file():
            pytest.fail(f"{BIN} is missing: build it with tests/webhooks.sh (build_binaries, tests/venv.sh)")
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = tempfile.mkdtemp(prefix="latchkey-webhooks-")
        self.secret = secrets.token_hex(32)
        self.port = None
        self.process = None
        self.starts = 0
        self.start()

    def start(self):
        """Runs `latchkey serve` (again: on the same port and data)."""
        self.starts += 1
        log = LOGS / f"{self.name}-{self.starts}.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": self.data_dir,
            "LATCHKEY_ADDR": f"127.0.0.1:{self.port or 0}",
            "LATCHKEY_DATA_DIR": self.data_dir,
            "LATCHKEY_JWT_SECRET": self.secret,
            "LATCHKEY_ALLOW_LOOPBACK_PROVIDERS": "true",
            "LATCHKEY_WEBHOOK_RETRY_SCHEDULE": "1,1",
            "RUST_LOG": "info",
        }
        with open(log, "w") as err:
            self.process = subprocess.Popen(
                [str(BIN), "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
            )
        url = self._listening(log)
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        poll(lambda: requests.get(f"{self.url}/healthz", timeout=2).status_code == 200, f"{self.url}/healthz")

    def _listening(self, log):
        deadline = time.monotonic() + START_TIMEOUT
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        seen = []
        while time.monotonic() < deadline and selector.select(timeout=deadline - time.monotonic()):
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"^latchkey listening on (\S+)", line)
            if match:
                return match.group(1)
        self.process.kill()
        pytest.fail(f"latchkey serve did not start; stdout: {''.join(seen)!r}; log:\n{log.read_text()}")

    def kill(self):
        """SIGKILL: the process gets no chance to finish anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def token(self, org):
        env = {"PATH": os.environ["PATH"], "LATCHKEY_JWT_SECRET": self.secret, "RUST_LOG": "warn"}
        args = [str(BIN), "token", "--org", org]
        return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout.strip()


class Org:
    """An organization of its own for one test."""

    def __init__(self, server):
        self.server = server
        self.id = f"org-{uuid.uuid4().hex[:12]}"
        self.token = server.token(self.id)

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, self.server.url + path, json=body, headers=headers, timeout=15)

    def api(self, method, path, body=None, status=None):
        r = self.call(method, path, body)
        ok = r.status_code == status if status else 200 <= r.status_code < 300
        assert ok, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def webhook(self, url, events=("Connection Created",)):
        """Creates webhook `wh-...` for `events` at `url`; returns (id, secret)."""
        hook = f"wh-{uuid.uuid4().hex[:8]}"
        created = self.api("PUT", f"/v1/webhooks/{hook}", {"url": url, "events": list(events), "enabled": True},
                           status=201)
        assert created["secret"].startswith("whsec_"), created
        return hook, created["secret"]

    def deliveries(self, hook):
        return self.api("GET", f"/v1/webhooks/{hook}/deliveries")["items"]

    def api_key_connection(self, api_key):
        """An API-key definition and a connection holding `api_key`: a `Connection Created` event."""
        self.api("PUT", "/v1/definitions/acme", {"auth": "api_key", "inputs": {
            "apiKey": {"type": "password", "required": True}}})
        return self.api("POST", "/v1/connections", {"definition": "acme", "customer": "c-1",
                                                    "values": {"apiKey": api_key}}, status=201)


class Received:
    """One request as the receiver got it, with what verifying it gave."""

    def __init__(self, headers, body, verified, error, status):
        self.headers = headers
        self.body = body
        self.verified = verified
        self.error = error
        self.status = status
        self.at = time.time()

    @property
    def id(self):
        return self.headers.get("webhook-id")

    @property
    def timestamp(self):
        return int(self.headers.get("webhook-timestamp", "0"))


class Receiver:
    """A webhook endpoint on 127.0.0.1: verifies every request with `Webhook(secret).verify`,
    records it, answers the next scripted status (`script`, then 200)."""

    def __init__(self):
        self.secret = None
        self.script = []
        self.received = []
        self.lock = threading.Lock()
        self.hold = None  # a threading.Event: requests wait for it, then get no answer
        self.port = None
        self.server = None
        self.up()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, error = None, None
                try:
                    verified = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError as e:
                    error = str(e)
                hold = receiver.hold
                with receiver.lock:
                    status = 0 if hold else (receiver.script.pop(0) if receiver.script else 200)
                    receiver.received.append(Received(headers, body, verified, error, status))
                if hold:
                    hold.wait(60)
                    self.close_connection = True
                    return
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        """Stops listening: connections to the port are refused until `up()`."""
        self.server.shutdown()
        self.server.server_close()

    def requests(self):
        with self.lock:
            return list(self.received)


@pytest.fixture
def latchkey():
    server = Latchkey("serve")
    yield server
    server.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    if r.hold:
        r.hold.set()
    try:
        r.down()
    except OSError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_json(text):
    return json.loads(text)
