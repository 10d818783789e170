"""The six Lambda binaries on `cargo lambda watch` (the Lambda Runtime API emulator), fed the
samples in events/ with `cargo lambda invoke`: what events/README.md tells a developer to run.
Run by tests/infra.sh with cargo-lambda on PATH, once per backend:

  embedded  the functions over a local data directory;
  aws       the functions as deployed, over DynamoDB, KMS and EventBridge: moto (from .venv/,
            started by tests/moto_server.py), a table made by `latchkey bootstrap`, a KMS key
            and an event bus.

The binaries are debug builds in target/debug with the features the test command's `cargo test`
resolves (`build_binaries` in tests/venv.sh, run by tests/infra.sh first), started here with the
Runtime API address `cargo lambda watch --only-lambda-apis` serves them at, as watch itself
would start them. Left to watch, each would be built by `cargo run --bin <function>`: features
resolved without the dev-dependencies, so the library and most of its dependencies compiled a
second time (about 200 s of a CI run).

Usage: python3 tests/lambda_invoke.py embedded|aws
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN_DIR = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug")
FUNCTIONS = ["connections-api", "oauth-callback", "token-lookup", "token-refresh", "token-revoke",
             "webhook-deliver"]
SECRET = "latchkey-events-dev-secret-not-for-production"
SAMPLE_ID = "con_01kahzz7v4m3n2q0000000000a"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AWS_SETUP = """
import sys, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1")
events = boto3.client("events", endpoint_url=sys.argv[1], region_name="us-east-1")
print(kms.create_key(Description="latchkey-lambda-invoke")["KeyMetadata"]["Arn"])
events.create_event_bus(Name="latchkey-lambda-invoke")
"""


def start_moto():
    """moto on a free port, and the environment that points the AWS SDK at it."""
    python = os.path.join(ROOT, ".venv", "bin", "python")
    moto = subprocess.Popen([python, os.path.join(ROOT, "tests", "moto_server.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = moto.stdout.readline().strip()
    assert line.startswith("moto listening on "), line
    url = line.rsplit(" ", 1)[1]
    env = dict(AWS_ENDPOINT_URL=url, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    key = subprocess.run([python, "-c", AWS_SETUP, url], check=True, capture_output=True, text=True,
                         env=dict(os.environ, **env)).stdout.strip()
    env.update(LATCHKEY_BACKEND="aws", LATCHKEY_TABLE="latchkey-lambda-invoke", LATCHKEY_KMS_KEY_ID=key,
               LATCHKEY_EVENT_BUS="latchkey-lambda-invoke")
    subprocess.run([binary("latchkey"), "bootstrap"], cwd=ROOT, check=True, env=dict(os.environ, **env))
    return moto, env


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        sys.exit(f"{path} is missing: tests/infra.sh builds it (build_binaries, tests/venv.sh)")
    return path


def stop(process):
    """Stops `process` and its group (SIGTERM, then SIGKILL after 30 s); never raises."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


# The function processes of the running backend, by name.
RUNNING = {}


def start_functions(port, env, log):
    """Each function's binary, polling its queue of `cargo lambda watch --only-lambda-apis`
    (`/.rt/<function>`) with the environment watch gives the functions it starts itself. Their
    standard output and error go to `log`, as Lambda sends both to CloudWatch Logs."""
    paths = {name: binary(name) for name in FUNCTIONS}
    processes = {}
    for name, path in paths.items():
        processes[name] = subprocess.Popen(
            [path], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(env, AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/{name}",
                     AWS_LAMBDA_FUNCTION_NAME=name, AWS_LAMBDA_FUNCTION_VERSION="1",
                     AWS_LAMBDA_FUNCTION_MEMORY_SIZE="4096"))
    return processes


def main():
    backend = sys.argv[1] if len(sys.argv) > 1 else ""
    if backend not in ("embedded", "aws"):
        sys.exit(__doc__)
    port = free_port()
    data = tempfile.mkdtemp(prefix="latchkey-watch-")
    # No LATCHKEY_PUBLIC_URL, as the template deploys the functions without PublicUrl.
    # The template's default LogLevel, whatever the caller's RUST_LOG: the log checks read it.
    env = dict(os.environ, LATCHKEY_BACKEND="embedded", LATCHKEY_JWT_SECRET=SECRET, LATCHKEY_DATA_DIR=data,
               RUST_LOG="info")
    env.pop("LATCHKEY_PUBLIC_URL", None)
    moto = None
    if backend == "aws":
        moto, aws = start_moto()
        env.update(aws)
    print(f"== {backend} backend")
    log = open(os.path.join(data, "watch.log"), "w")
    functions_log = open(os.path.join(data, "functions.log"), "w")
    watch = subprocess.Popen(
        ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port", str(port), "--ignore-changes",
         "--only-lambda-apis"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if watch.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"cargo lambda watch did not start: {open(log.name).read()}")
                time.sleep(0.3)
        RUNNING.update(start_functions(port, env, functions_log))
        run(port, lambda cid: stored_in_moto(aws, cid) if moto else None)
        for process in RUNNING.values():
            stop(process)
        check_logs(functions_log.name)
    except BaseException:
        for f in (log, functions_log):
            f.flush()
            print(open(f.name).read()[-4000:], file=sys.stderr)
        raise
    finally:
        for process in [*RUNNING.values(), watch]:
            stop(process)
        RUNNING.clear()
        if moto:
            moto.stdin.close()  # moto_server.py exits at EOF
            moto.wait(timeout=30)


def check_logs(path):
    """What the functions wrote, read as CloudWatch Logs would keep it (the `lambda` branch of
    `telemetry::init`, README "Logs"): every line one JSON object; the lines of an API Gateway
    request carry its `requestContext.requestId` as `span.request_id`; the lookups' audit lines
    are there; and no secret of the samples appears anywhere."""
    lines = [line for line in open(path).read().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a function wrote a line that is not JSON: {line[:300]!r}")
    check("the functions' log: every line a JSON object", all(isinstance(r, dict) for r in records), True)
    with open(os.path.join(ROOT, "events", "connections-api", "healthz.json")) as f:
        healthz_id = json.load(f)["requestContext"]["requestId"]
    healthz = [r for r in records if r.get("message") == "request" and r.get("span", {}).get("route") == "/healthz"]
    check("the functions' log: GET /healthz's line carries API Gateway's request id",
          [r["span"].get("request_id") for r in healthz], [healthz_id])
    audits = [r for r in records if r.get("audit") == "credentials_read"]
    check("the functions' log: an audit line per token lookup (channel lambda)",
          (len(audits) >= 2, {r.get("channel") for r in audits}), (True, {"lambda"}))
    secrets = sample_secrets()
    assert {"sk_test_sample_value", "sample-client-secret-not-real"} <= set(secrets), secrets
    leaked = [s[:12] + "..." for s in secrets if any(s in line for line in lines)]
    check(f"the functions' log: none of the samples' {len(secrets)} secrets in it", leaked, [])


def sample_secrets():
    """Every secret the samples in events/ carry: the JWT signing secret, the bearer tokens of
    their `authorization` headers, the values of connections and the defaults of `password`
    inputs in their bodies."""
    found = {SECRET}

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "password" and isinstance(node.get("default"), str):
                found.add(node["default"])
            for key, value in node.items():
                if key == "values" and isinstance(value, dict):
                    found.update(v for v in value.values() if isinstance(v, str) and len(v) >= 8)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for directory, _, files in os.walk(os.path.join(ROOT, "events")):
        for name in files:
            if not name.endswith(".json"):
                continue
            with open(os.path.join(directory, name)) as f:
                sample = json.load(f)
            auth = (sample.get("headers") or {}).get("authorization", "") if isinstance(sample, dict) else ""
            if auth.lower().startswith("bearer "):
                found.add(auth[len("bearer "):])
            body = sample.get("body") if isinstance(sample, dict) else None
            try:
                walk(json.loads(body) if isinstance(body, str) else sample)
            except ValueError:
                pass
    return sorted(found)


def stored_in_moto(env, connection_id):
    """Whether moto's table holds the connection: the functions did use the aws backend."""
    script = ("import os, sys, boto3; d = boto3.client('dynamodb', endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name=os.environ['AWS_REGION']); "
              "items = d.scan(TableName=os.environ['LATCHKEY_TABLE'])['Items']; "
              "print(sum(sys.argv[1] in str(i) for i in items))")
    python = os.path.join(ROOT, ".venv", "bin", "python")
    out = subprocess.run([python, "-c", script, connection_id], check=True, capture_output=True, text=True,
                         env=dict(os.environ, **env)).stdout
    assert int(out) > 0, f"{connection_id} is not in moto's table"
    print("ok  the connection is in DynamoDB (moto)")


def invoke(port, function, sample, connection_id=SAMPLE_ID):
    """Invokes `function` with events/`sample`: (ok, payload); a function error gives ok False
    and the error payload."""
    process = RUNNING[function]
    assert process.poll() is None, f"{function} exited ({process.returncode}) before {sample}"
    with open(os.path.join(ROOT, "events", sample)) as f:
        payload = f.read().replace(SAMPLE_ID, connection_id)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(payload)
    out = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--data-file", f.name, "--invoke-address", "127.0.0.1",
         "--invoke-port", str(port), "--output-format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    os.unlink(f.name)
    text = out.stdout.strip() or out.stderr.strip()
    start = text.find("{")
    body = json.loads(text[start:text.rfind("}") + 1]) if start >= 0 else text
    return out.returncode == 0, body


def http(port, function, sample, connection_id=SAMPLE_ID):
    ok, response = invoke(port, function, sample, connection_id)
    assert ok, f"{function} {sample}: {response}"
    body = response.get("body") or ""
    try:
        body = json.loads(body)
    except ValueError:
        pass
    return response["statusCode"], body


def check(what, got, expected):
    assert got == expected, f"{what}: expected {expected!r}, got {got!r}"
    print(f"ok  {what}")


def run(port, verify_stored):
    check("connections-api GET /healthz", http(port, "connections-api", "connections-api/healthz.json")[0], 200)
    check("connections-api PUT definition",
          http(port, "connections-api", "connections-api/put-definition.json")[0], 201)
    status, conn = http(port, "connections-api", "connections-api/create-connection.json")
    check("connections-api POST connection", status, 201)
    cid = conn["id"]
    verify_stored(cid)
    check("connections-api GET connection",
          http(port, "connections-api", "connections-api/get-connection.json", cid)[0], 200)
    # Hand-written authorizer claims of the runtime role, no bearer token: never trusted.
    check("connections-api refuses forged authorizer claims",
          http(port, "connections-api", "connections-api/forged-authorizer-claims.json", cid)[0], 401)
    # The oauth-callback binary mounts the callback only.
    check("oauth-callback refuses a connections route",
          http(port, "oauth-callback", "connections-api/list-connections.json")[0], 404)
    check("oauth-callback GET /v1/oauth/callback (a state it never issued)",
          http(port, "oauth-callback", "oauth-callback/callback.json")[0], 400)
    check("oauth-callback GET /v1/oauth/callback (an OAuth 1.0a request token it never issued)",
          http(port, "oauth-callback", "oauth-callback/oauth1-callback.json")[0], 400)

    ok, found = invoke(port, "token-lookup", "token-lookup/lookup.json", cid)
    check("token-lookup fields", (ok, found.get("fields", {}).get("apiKey")), (True, "sk_test_sample_value"))
    # By selector: the customer's index, then the records it found (DynamoDB: Query, BatchGetItem).
    ok, selected = invoke(port, "token-lookup", "token-lookup/lookup-by-selector.json")
    check("token-lookup by selector", (ok, selected.get("connection_id")), (True, cid))
    status, page = http(port, "connections-api", "connections-api/list-connections.json")
    check("connections-api GET /v1/connections?customer=c-1",
          (status, [c.get("id") for c in page.get("items", [])] if isinstance(page, dict) else page), (200, [cid]))
    ok, error = invoke(port, "token-lookup", "token-lookup/unknown-connection.json")
    check("token-lookup unknown connection", (ok, "ConnectionNotFound" in json.dumps(error)), (False, True))
    ok, summary = invoke(port, "token-refresh", "token-refresh/scheduled.json")
    check("token-refresh sweep", (ok, sorted(summary)), (True, ["device_polls", "due", "failed", "refreshed", "revocations", "skipped", "verified"]))
    # A batch of its refresh queue: an organization's message of two entries and one in the
    # single-entry format of earlier releases, naming no connection of this deployment (each
    # entry re-read, nothing to refresh, nothing sent again or handed back).
    ok, answer = invoke(port, "token-refresh", "token-refresh/queue-batch.json")
    check("token-refresh worker batch", (ok, answer), (True, {"batchItemFailures": []}))
    # An operator's rotation: acme's branch key (v1, made by the connection above) becomes v2.
    ok, rotated = invoke(port, "token-refresh", "token-refresh/rotate-branch-keys.json")
    check("token-refresh rotates a branch key", (ok, rotated), (True, {"rotated": {"acme": 2}}))

    # Without LATCHKEY_PUBLIC_URL the redirect URI is on the domain API Gateway was called at
    # (the samples' requestContext.domainName).
    check("connections-api PUT OAuth definition",
          http(port, "connections-api", "connections-api/put-oauth-definition.json")[0], 201)
    status, oauth = http(port, "connections-api", "connections-api/create-oauth-connection.json")
    check("connections-api POST OAuth connection", status, 201)
    status, started = http(port, "connections-api", "connections-api/authorize-connection.json", oauth["id"])
    check("connections-api authorize", status, 200)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(started["authorize_url"]).query)
    check("the redirect URI is on the API Gateway domain", query.get("redirect_uri"),
          ["https://abc123.execute-api.eu-west-1.amazonaws.com/v1/oauth/callback"])

    check("connections-api disconnect",
          http(port, "connections-api", "connections-api/disconnect-connection.json", cid)[0], 200)
    ok, done = invoke(port, "token-revoke", "token-revoke/connection-disconnected.json", cid)
    # An API-key connection leaves no revocation job: nothing to revoke, however often it comes.
    check("token-revoke", (ok, done.get("jobs")), (True, 0))
    check("connections-api DELETE connection",
          http(port, "connections-api", "connections-api/delete-connection.json", cid)[0], 204)
    # No webhook in this organization: the event has no delivery, the message is settled.
    ok, answer = invoke(port, "webhook-deliver", "webhook-deliver/connection-created.json", cid)
    check("webhook-deliver", (ok, answer), (True, {"batchItemFailures": []}))
    # Its schedule: the sweep of deliveries due (none here).
    ok, swept = invoke(port, "webhook-deliver", "webhook-deliver/scheduled.json")
    check("webhook-deliver sweep", (ok, swept), (True, {"attempted": 0}))


if __name__ == "__main__":
    main()
