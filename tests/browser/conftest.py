"""Fixtures of the real-browser suite (run it with `bash tests/browser.sh`).

Everything listens on 127.0.0.1, on free ports, and is stopped by the fixture that started it:

- `latchkey`: one `latchkey serve` for the whole run (`LATCHKEY_BIN`, default
  target/debug/latchkey), with a temporary data directory, a fixed JWT secret, and
  `LATCHKEY_CONNECT_FRAME_ANCESTORS` naming the `host` app's origin. Tokens are minted with
  `latchkey token` and the same secret; every test works in an organization of its own.
- `shifted_latchkey`: a second `latchkey serve` whose wall clock the test moves (libfaketime,
  `LD_PRELOAD`, offset read from a file at every clock read): connect-link expiry without
  waiting 30 minutes.
- `oidc`: oidc-provider (`tests/oauth/oidc.mjs`) with latchkey's callback registered; its
  devInteractions pages do login (any name, any password) and consent in the browser.
- `host`: a tiny host application (`tests/browser/host.html`) served by Python's http.server on
  its own port: it opens a connect link as a popup or in an iframe and lists the messages it
  receives.
- `browsers`: makes Debian's chromium (headless, /usr/bin/chromium, /usr/bin/chromedriver);
  each call is a fresh browser with an empty profile (a second "browser context").
- `shot`: saves a screenshot of a browser at desktop size (1000x700) and at phone size
  (390x844) to target/screenshots/<test>/NN-<name>{,-phone}.png.

The committed docs/connect/*.png are copies of the -view screenshots (the list's desktop one
cropped from the whole page, the expired page's trimmed of empty space), reduced with Pillow's
quantize (Pillow is not a dependency of the suite):
    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow
    /tmp/pil/bin/python -c 'import sys; from PIL import Image; \
        Image.open(sys.argv[1]).convert("RGB").quantize(64).save(sys.argv[2], optimize=True)' SRC DST
"""

import base64
import glob
import http.server
import json
import os
import re
import secrets
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("LATCHKEY_BIN", TARGET / "debug" / "latchkey"))
LOGS = TARGET / "browser"
SCREENSHOTS = TARGET / "screenshots"
DESKTOP = (1000, 700)
PHONE = (390, 844)
START_TIMEOUT = 30.0

# Nothing here may reach a proxy from the environment: every server is on loopback.
for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = "127.0.0.1,localhost"


def wait_for_line(process, pattern, what, log):
    """Reads `process`'s stdout until a line matches `pattern` (a regex with one group) and
    returns that group; fails, with the process's log, when it exits or `START_TIMEOUT` passes."""
    deadline = time.monotonic() + START_TIMEOUT
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen = []
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    process.kill()
    pytest.fail(f"{what} did not start; stdout: {''.join(seen)!r}; log {log}:\n{Path(log).read_text()}")


def stop(process):
    """Ends a process this suite started: SIGTERM, then SIGKILL after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def poll(check, what, timeout=START_TIMEOUT, interval=0.05):
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
    """A running `latchkey serve` and what a test needs to talk to it."""

    def __init__(self, name, env_extra=None, preload=None):
        if not BIN.is_file():
            pytest.fail(f"{BIN} is missing: build it with tests/browser.sh (build_binaries, tests/venv.sh)")
        LOGS.mkdir(parents=True, exist_ok=True)
        self.data_dir = tempfile.mkdtemp(prefix="latchkey-browser-")
        self.secret = secrets.token_hex(32)
        self.log = LOGS / f"{name}.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": self.data_dir,
            "LATCHKEY_ADDR": "127.0.0.1:0",
            "LATCHKEY_DATA_DIR": self.data_dir,
            "LATCHKEY_JWT_SECRET": self.secret,
            "RUST_LOG": "info",
            **(env_extra or {}),
        }
        if preload:
            env.update(preload)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(BIN), "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.url = wait_for_line(self.process, r"^latchkey listening on (\S+)", f"latchkey serve ({name})", self.log)
        poll(lambda: requests.get(f"{self.url}/healthz", timeout=2).status_code == 200, f"{self.url}/healthz")

    def close(self):
        stop(self.process)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def token(self, org, customer=None, roles=()):
        """A bearer token of `org` (a customer user's with `customer`), minted by `latchkey token`."""
        args = [str(BIN), "token", "--org", org]
        if customer:
            args += ["--customer", customer]
        for role in roles:
            args += ["--role", role]
        env = {"PATH": os.environ["PATH"], "LATCHKEY_JWT_SECRET": self.secret, "RUST_LOG": "warn"}
        return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout.strip()

    def call(self, token, method, path, body=None):
        """One API request; returns the `requests.Response` whatever its status."""
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, self.url + path, json=body, headers=headers, timeout=15)

    def api(self, token, method, path, body=None, status=None):
        """One API request that must succeed (a 2xx, or exactly `status`); returns its JSON body."""
        r = self.call(token, method, path, body)
        ok = r.status_code == status if status else 200 <= r.status_code < 300
        assert ok, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None


class Org:
    """An organization of its own for one test: tokens and shortcuts to the API."""

    def __init__(self, server):
        self.server = server
        self.id = f"org-{uuid.uuid4().hex[:12]}"
        self.token = server.token(self.id)
        self.runtime = server.token(self.id, roles=["runtime"])

    def define(self, key, definition):
        return self.server.api(self.token, "PUT", f"/v1/definitions/{key}", definition)

    def create(self, body):
        return self.server.api(self.token, "POST", "/v1/connections", body, status=201)

    def connection(self, cid):
        return self.server.api(self.token, "GET", f"/v1/connections/{cid}")

    def connections(self, customer):
        return self.server.api(self.token, "GET", f"/v1/connections?customer={customer}&limit=200")["items"]

    def lookup(self, cid, body=None):
        """`POST /v1/connections/{id}/token` as the runtime: the response (any status)."""
        return self.server.call(self.runtime, "POST", f"/v1/connections/{cid}/token", body or {})

    def report_error(self, cid, message):
        r = self.lookup(cid, {"action": "report_error", "message": message})
        assert r.status_code < 300, f"report_error: {r.status_code} {r.text}"

    def connect_link(self, customer, **members):
        """`POST /v1/connect/sessions` for `customer` (other members as given): the link URL."""
        created = self.server.api(
            self.token, "POST", "/v1/connect/sessions", {"customer": customer, **members}, status=201
        )
        assert created["url"].startswith(f"{self.server.url}/connect?session="), created
        return created["url"]


@pytest.fixture(scope="session")
def host():
    """The host application's origin, `http://127.0.0.1:PORT`, serving tests/browser/host.html."""
    directory = str(Path(__file__).parent)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def latchkey(host):
    server = Latchkey("serve", {"LATCHKEY_CONNECT_FRAME_ANCESTORS": host})
    yield server
    server.close()


def libfaketime():
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: `apt-get install -y libfaketime` (tests/browser.sh does)")
    return found[0]


class ShiftedLatchkey(Latchkey):
    """`latchkey serve` whose wall clock runs `shift(seconds)` ahead of the real one (libfaketime
    reads the offset file at every clock read; the monotonic clock, which timers use, is real)."""

    def __init__(self):
        self.offset_file = Path(tempfile.mkstemp(prefix="latchkey-faketime-")[1])
        self.offset_file.write_text("+0\n")
        super().__init__(
            "serve-shifted",
            preload={
                "LD_PRELOAD": libfaketime(),
                "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
                "FAKETIME_NO_CACHE": "1",
                "DONT_FAKE_MONOTONIC": "1",
            },
        )

    def shift(self, seconds):
        self.offset_file.write_text(f"+{int(seconds)}\n")

    def close(self):
        super().close()
        self.offset_file.unlink(missing_ok=True)


@pytest.fixture
def shifted_latchkey():
    server = ShiftedLatchkey()
    yield server
    server.close()


@pytest.fixture
def org(latchkey):
    return Org(latchkey)


class Oidc:
    def __init__(self, callback):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = LOGS / "oidc.log"
        script = ROOT / "tests" / "oauth" / "oidc.mjs"
        if not (ROOT / "tests" / "oauth" / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("tests/oauth/node_modules is missing: `npm ci --prefix tests/oauth` (tests/browser.sh does)")
        config = json.dumps({"redirect_uris": [callback]})
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["node", str(script), config], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.issuer = wait_for_line(self.process, r"^oidc listening on (\S+)", "oidc-provider", self.log)
        discovery = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5).json()
        self.authorize_url = discovery["authorization_endpoint"]
        self.token_url = discovery["token_endpoint"]
        self.client_id = "latchkey-test"
        self.client_secret = "latchkey-test-secret"

    def stats(self):
        return requests.get(f"{self.issuer}/__stats", timeout=5).json()

    def code_exchanges(self):
        return self.stats()["token_requests"].get("authorization_code", 0)

    def definition(self, label="Strict IdP", description=None):
        """An `oauth2_authorization_code` definition of this provider, without redirects (the
        connect page is where the browser lands), the client's settings organization-only."""
        org_only = {"visibility": "organization"}
        body = {
            "label": label,
            "auth": "oauth2_authorization_code",
            "inputs": {
                "authorizeUrl": {"type": "url", "default": self.authorize_url, **org_only},
                "tokenUrl": {"type": "url", "default": self.token_url, **org_only},
                "issuer": {"type": "url", "default": self.issuer, **org_only},
                "clientId": {"type": "string", "default": self.client_id, **org_only},
                "clientSecret": {"type": "password", "default": self.client_secret, **org_only},
                "scopes": {"type": "string", "default": "openid offline_access api:read", **org_only},
            },
        }
        if description:
            body["description"] = description
        return body

    def close(self):
        self.process.stdin.close()
        stop(self.process)


@pytest.fixture(scope="session")
def oidc(latchkey):
    provider = Oidc(f"{latchkey.url}/v1/oauth/callback")
    yield provider
    provider.close()


@pytest.fixture
def browsers():
    """`browsers()` starts a fresh headless chromium (empty profile, desktop size); all are quit
    when the test ends. Host names other than loopback do not resolve (no third-party request
    can leave, e.g. the provider page's web font)."""
    started = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(arg)
        # The network log lets a test read the URLs a navigation went through (redirects).
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        driver.set_page_load_timeout(30)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def shot(request):
    """`shot(driver, name, focus=None)`: screenshots of the whole page `driver` shows, at
    desktop width (NN-name.png) and at phone width (NN-name-phone.png); with `focus` (an
    element, or True for the top of the page), also the window's view with it scrolled to the
    middle, at desktop and phone size (NN-name-view.png, NN-name-view-phone.png: what
    docs/connect/ shows)."""
    directory = SCREENSHOTS / request.node.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    count = [0]

    def full_page(path):
        metrics = driver_of[0].execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
        data = driver_of[0].execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )["data"]
        Path(path).write_bytes(base64.b64decode(data))

    driver_of = [None]

    def take(driver, name, focus=None):
        driver_of[0] = driver
        count[0] += 1
        stem = directory / f"{count[0]:02d}-{name}"
        size = driver.get_window_size()
        try:
            for suffix, (width, height) in (("", DESKTOP), ("-phone", PHONE)):
                driver.set_window_size(width, height)
                # The window's frame takes some of it: grow the window until the page itself
                # (the viewport) has the size.
                inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
                if inner != [width, height]:
                    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
                full_page(f"{stem}{suffix}.png")
                if focus is not None:
                    if focus is True:
                        driver.execute_script("window.scrollTo(0, 0)")
                    else:
                        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", focus)
                    driver.save_screenshot(f"{stem}-view{suffix}.png")
                    driver.execute_script("window.scrollTo(0, 0)")
        finally:
            driver.set_window_size(size["width"], size["height"])

    return take
