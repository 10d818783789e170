#!/usr/bin/env bash
# schemathesis (pinned in tests/schemathesis-requirements.txt, installed into .venv-schemathesis/)
# against the OpenAPI document of a running `latchkey serve`: every operation of
# `GET /openapi.json` gets generated requests (the document's examples, its coverage cases, then
# random ones: valid and invalid) with an organization token, and every answer must be no 5xx,
# a documented status, and match the documented schema. A fixed seed and example budget keep the
# run reproducible and about four minutes long on 2 cores. The planted definitions' OAuth
# endpoints are tests/schemathesis_provider.py, which grants every request, so that reaching the
# provider is no outage's 502 (a generated PUT may still point a definition elsewhere).
#
# The server runs on a free loopback port (it binds port 0 and prints where it listens) with a
# fresh data directory and a fresh JWT secret; it is stopped however this script ends. Its log
# and schemathesis's JUnit report stay in target/schemathesis/ for a failed run.
#
# tests/run.sh runs this; it also runs alone: `bash tests/schemathesis.sh` (extra arguments go to
# `schemathesis run`, e.g. `--include-operation-id putDefinition` or `--max-examples 200`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/venv.sh

step "schemathesis in .venv-schemathesis/ from tests/schemathesis-requirements.txt"
venv .venv-schemathesis tests/schemathesis-requirements.txt

step "the latchkey command, as cargo test builds it (build_binaries, tests/venv.sh)"
build_binaries
bin="${CARGO_TARGET_DIR:-target}/debug/latchkey"
py=.venv-schemathesis/bin/python
# Everything here talks to the loopback server: no proxy from the environment.
export no_proxy=127.0.0.1 NO_PROXY=127.0.0.1

out=target/schemathesis
rm -rf "$out"
mkdir -p "$out"
data=$(mktemp -d)
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n') # 64 hex characters, 256 bits
pid=
provider_pid=
stop() {
    if [ -n "$provider_pid" ]; then
        # Its standard input closed is its stop; TERM, then KILL, if it lingers.
        [ -n "${PROVIDER[1]:-}" ] && { exec {PROVIDER[1]}>&- || true; }
        for _ in $(seq 20); do kill -0 "$provider_pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$provider_pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$provider_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$provider_pid" 2>/dev/null || true
        wait "$provider_pid" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap stop EXIT

step "an OAuth provider that grants every token request, on a free loopback port (tests/schemathesis_provider.py)"
coproc PROVIDER { exec "$py" tests/schemathesis_provider.py; }
provider_pid=${PROVIDER_PID:-}
line=
[ -n "${PROVIDER[0]:-}" ] && { read -r -t 20 line <&"${PROVIDER[0]}" || true; }
provider=${line#provider listening on }
[[ "$provider" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || { echo "the provider did not start: $line" >&2; exit 1; }
echo "    listening on $provider"

step "latchkey serve on a free loopback port (log: $out/server.log)"
env -i PATH="$PATH" HOME="$data" LATCHKEY_ADDR=127.0.0.1:0 LATCHKEY_DATA_DIR="$data" \
    LATCHKEY_JWT_SECRET="$secret" RUST_LOG=info \
    "$bin" serve > "$out/server.out" 2> "$out/server.log" < /dev/null &
pid=$!
address=
for _ in $(seq 200); do
    address=$(sed -n 's/^latchkey listening on //p' "$out/server.out")
    [ -n "$address" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$address" ]; then
    echo "latchkey serve did not start:" >&2
    cat "$out/server.log" >&2
    exit 1
fi
healthy=
for _ in $(seq 200); do
    if "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$address/healthz" \
        2> /dev/null; then
        healthy=1
        break
    fi
    sleep 0.1
done
[ -n "$healthy" ] || { echo "$address/healthz never answered 200" >&2; cat "$out/server.log" >&2; exit 1; }
echo "    listening on $address"

# An organization user of `acme` who also has the runtime role, so that token lookups get past
# the role check too.
token=$(env -i LATCHKEY_JWT_SECRET="$secret" RUST_LOG=warn "$bin" token --org acme --role runtime)

# Test data, so that the operations on `{key}` and `{id}` reach more than a 404: a definition of
# each auth kind (their OAuth endpoints are the provider above, which grants every request, so
# that a refresh is no outage's 502) and connections of each, in every scope.
# `acme-api` is the key the document's examples name.
api() { # METHOD PATH [BODY]: prints the answer's body; fails, saying why, on anything but a 2xx
    "$py" - "$address" "$token" "$@" <<'PY'
import sys, urllib.error, urllib.request
address, token, method, path = sys.argv[1:5]
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
try:
    with urllib.request.urlopen(urllib.request.Request(address + path, body, headers, method=method), timeout=10) as r:
        sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    sys.exit(f"{method} {path}: {e.code} {e.read().decode()}")
PY
}
json_id() { "$py" -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }
oauth="\"authorizeUrl\": {\"type\": \"url\", \"default\": \"$provider/authorize\"},
    \"tokenUrl\": {\"type\": \"url\", \"default\": \"$provider/token\"},
    \"revokeUrl\": {\"type\": \"url\", \"default\": \"$provider/revoke\"},
    \"clientId\": {\"type\": \"string\", \"default\": \"st-client\"},
    \"clientSecret\": {\"type\": \"password\", \"default\": \"st-client-secret\"}"
api PUT /v1/definitions/acme-api '{"label": "Acme API", "auth": "api_key", "inputs": {
    "apiKey": {"type": "password", "required": true},
    "endpoint": {"type": "url", "default": "https://api.acme.com"},
    "plan": {"type": "string", "visibility": "organization", "default": "gold"}}}' > /dev/null
api PUT /v1/definitions/acme-basic '{"auth": "basic", "inputs": {
    "username": {"type": "string", "required": true}, "password": {"type": "password", "required": true}}}' > /dev/null
api PUT /v1/definitions/acme-oauth "{\"auth\": \"oauth2_authorization_code\",
    \"redirects\": {\"success_url\": \"https://app.example.com/done\", \"failure_url\": \"https://app.example.com/failed\"},
    \"inputs\": {$oauth}}" > /dev/null
api PUT /v1/definitions/acme-cc "{\"auth\": \"oauth2_client_credentials\", \"inputs\": {$oauth}}" > /dev/null
api PUT /v1/definitions/unused '{"auth": "custom", "inputs": {"note": {"type": "text"}}}' > /dev/null
ids=()
for body in \
    '{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_live_st"}}' \
    '{"definition": "acme-api", "customer": "c-1", "instance_id": "inst-9", "values": {"apiKey": "sk_live_st"}}' \
    '{"definition": "acme-basic", "scope": "organization", "values": {"username": "u", "password": "p"}}' \
    '{"definition": "acme-oauth", "customer": "c-2"}' \
    '{"definition": "acme-cc", "scope": "organization"}'; do
    ids+=("$(api POST /v1/connections "$body" | json_id)")
done
# Looked up once: `active`, with a "used" log line.
api POST "/v1/connections/${ids[0]}/token" '{}' > /dev/null
# One more, for the DELETE operations alone (so that the others keep theirs).
doomed=$(api POST /v1/connections '{"definition": "acme-api", "customer": "c-3", "values": {"apiKey": "x"}}' | json_id)
quoted() { printf '"%s", ' "$@" | sed 's/, $//'; }
cat > "$out/schemathesis.toml" <<TOML
# Written by tests/schemathesis.sh: path parameters drawn mostly from the planted data, and no
# state kept between runs (no .schemathesis/ cache in the work tree).
[cache]
enabled = false

[parameters]
"path.id" = { dictionary = "connections", probability = 0.8 }
"path.key" = { dictionary = "definitions", probability = 0.8 }

[dictionaries.connections]
values = [$(quoted "${ids[@]}")]

[dictionaries.definitions]
values = ["acme-api", "acme-basic", "acme-oauth", "acme-cc", "unused"]

[[operations]]
include-operation-id = "deleteConnection"
parameters = { "path.id" = "$doomed" }
TOML

step "schemathesis run $address/openapi.json"
# The checks: no 5xx; every status, content type, header and body as documented; a path the
# document serves answers 405 (with `Allow`) to a method it does not document; a request without
# its bearer token is refused; a deleted resource is gone and a created one is there (the
# stateful phase follows the links schemathesis infers from the document).
# Left out: negative_data_rejection and positive_data_acceptance judge a request by the schema
# alone, which cannot say everything Latchkey checks (a definition's inputs, If-Match before the
# body, empty query parameters treated as absent): those are tested by the suites in tests/.
# --max-examples: per operation and phase. 300 reached the same 291 distinct method, route and
# status outcomes (the server log's) as 600 did, both with the provider above, in 200 s of
# fuzzing instead of 395 (2026-12-01, 2 cores); schemathesis, not the server, is the time (Python: 90% of the CPU). --seed, no
# example database (hypothesis's other files go to $out, not .hypothesis/) and --workers 1: the
# same generated requests in the same order every run, so that a failure replays with the same
# command. With 40 examples and the OAuth endpoints on a closed port, a lookup that refreshed an
# imported token answered 502 (the outage, rightly): hence the provider that answers.
status=0
HYPOTHESIS_STORAGE_DIRECTORY="$out/hypothesis" \
    .venv-schemathesis/bin/schemathesis --no-color --config-file "$out/schemathesis.toml" run "$address/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,missing_required_header,unsupported_method,allow_header_conformance,use_after_free,ensure_resource_availability,ignored_auth \
    --max-examples 300 \
    --seed 20261129 \
    --generation-database none \
    --workers 1 \
    --request-timeout 10 \
    --report junit --report-junit-path "$out/junit.xml" \
    "$@" || status=$?
if [ "$status" != 0 ]; then
    echo "schemathesis failed (exit $status); the server's log: $out/server.log" >&2
    exit "$status"
fi
