#!/usr/bin/env bash
# Installs every test dependency into the project's own folders and runs every test.
# This is the README's test command; .ci/run calls it and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/venv.sh

step "toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

# The JWT bearer tests make their RS256/ES256 keys with the openssl CLI (Debian's ca-certificates
# brings it; a bare image may lack it).
if ! command -v openssl > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  step "apt-get install openssl"
  apt-get update -q > /dev/null && apt-get install -y -q openssl > /dev/null
fi

step "moto (AWS emulator) in .venv/ from tests/requirements.txt"
venv .venv tests/requirements.txt
step "the OAuth 1.0a test provider (oauthlib) in .venv-oauth1/ from tests/oauth/oauth1-requirements.txt"
venv .venv-oauth1 tests/oauth/oauth1-requirements.txt

step "OAuth test servers (oidc-provider, oauth2-mock-server) in tests/oauth/node_modules"
npm ci --prefix tests/oauth --no-audit --no-fund --loglevel=error

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo deny (advisories from the snapshot in ../shared, licenses, bans, sources)"
# A debug build: it compiles in about a minute instead of three, and checks this workspace in
# about 4 s.
if [ ! -x .tools/bin/cargo-deny ]; then
  cargo install --locked --debug --root .tools cargo-deny --version 0.20.2
fi
bash ../shared/tools/advisory-db.sh .tools/advisory-db > /dev/null
# cargo-deny reads `cargo metadata` offline, which needs every locked crate of every target
# platform in the local registry; builds fetch only this platform's, so fetch them all first.
cargo fetch --locked
.tools/bin/cargo-deny --offline check

step "cargo clippy, then the client's lambda feature (LambdaClient: lookup through lambda:InvokeFunction)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --locked -p latchkey-client --all-targets --features lambda -- -D warnings

# `test_flags` (tests/venv.sh): one package selection and feature set for every cargo build below.
step "cargo test (the client's lambda feature too)"
cargo test "${test_flags[@]}"

# The library as the Lambda functions build it (no `embedded` feature) is not tested here: that
# build recompiled the library and 36 dependencies (130 to 160 s). `cargo test` above checks the
# refusal of LATCHKEY_BACKEND=embedded such a build answers (config::wiring), and tests/infra.sh
# that every arm64 function binary links it and no SQLite; `cargo test -p latchkey
# --no-default-features --lib config::wiring` runs the library's answer itself.

# The test binaries: tests/api (black-box, a module per suite), tests/adapters, and a few more;
# the suites below are selected by module path within tests/api: `api FILTER...`.
api() { cargo test "${test_flags[@]}" --test api -- "$@"; }
step "the black-box serve suite again, against the router served in-process"
LATCHKEY_TEST_TRANSPORT=in-process api serve::
step "the black-box serve suite on the aws backend (moto), through the binary, then in-process"
LATCHKEY_TEST_BACKEND=aws api serve::
LATCHKEY_TEST_BACKEND=aws LATCHKEY_TEST_TRANSPORT=in-process api serve::

step "refresh on the aws backend (moto): across processes and restarts, the sweep, outages (backoff, Retry-After, red)"
LATCHKEY_TEST_BACKEND=aws api refresh::
step "the real-provider quirk table (tests/oauth/quirks.mjs) on the aws backend (moto)"
LATCHKEY_TEST_BACKEND=aws api quirks::
step "disconnect and revocation (RFC 7009) on the aws backend (moto): serve's revoker on its own events beside EventBridge, the sweep's retries"
LATCHKEY_TEST_BACKEND=aws api revoke::
step "isolation walk and canaries on the aws backend (moto): the AWS SDK's trace output too"
LATCHKEY_TEST_BACKEND=aws api isolation::
step "token import on the aws backend (moto): sealed, scheduled and refreshed like an authorized grant"
LATCHKEY_TEST_BACKEND=aws api import::
step "lookup by selector on the aws backend (moto): the customer index query, HTTP and the Lambda payload"
LATCHKEY_TEST_BACKEND=aws api selector::
step "tags and Idempotency-Key on the aws backend (moto): the tag FilterExpression's paging, conditional key claims"
LATCHKEY_TEST_BACKEND=aws api tags:: idempotency::
step "credential verification on the aws backend (moto): connect-time checks and the sweep's schedule in the due index"
LATCHKEY_TEST_BACKEND=aws api verify::
step "reconnect in place and refresh-token lifetime on the aws backend (moto): kept refresh tokens, the warning's conditional write in the due index"
LATCHKEY_TEST_BACKEND=aws api reconnect:: rt_lifetime::
step "connect sessions on the aws backend (moto): the link's one conditional trade, TTL'd items, the sealed idempotent answer"
LATCHKEY_TEST_BACKEND=aws api connect_sessions::
step "JWT bearer service accounts on the aws backend (moto) and in-process: assertions, single flight, the sweep"
LATCHKEY_TEST_BACKEND=aws api jwt_bearer::
LATCHKEY_TEST_TRANSPORT=in-process api jwt_bearer::
step "device authorization (RFC 8628) on the aws backend (moto): the due index polls pending device codes"
LATCHKEY_TEST_BACKEND=aws api device_code::
step "OAuth 1.0a (oauth1) against the oauthlib provider on the aws backend (moto) and in-process: every signature method, replay, disconnect, the connect page"
LATCHKEY_TEST_BACKEND=aws api oauth1::
LATCHKEY_TEST_TRANSPORT=in-process api oauth1::
step "the connect page over HTTP in-process, and on the aws backend (moto): its forms and refusals on either store"
LATCHKEY_TEST_TRANSPORT=in-process api connect_page::
LATCHKEY_TEST_BACKEND=aws api connect_page::
step "webhooks on the aws backend (moto): EventBridge -> SQS -> enqueued deliveries, the due index, conditional claims"
LATCHKEY_TEST_BACKEND=aws api webhooks::
step "events and the audit line on the aws backend (moto): Connection Expired reasons, Refresh Recovered, details as the bus carries them"
LATCHKEY_TEST_BACKEND=aws api events::
step "the sweep's fan-out on the aws backend (moto): dispatch to SQS, worker batches, redelivery, batch item failures"
LATCHKEY_TEST_BACKEND=aws api fanout::

step "the connect page in a real browser (tests/browser.sh: Debian chromium, Selenium pinned in tests/browser/requirements.txt)"
bash tests/browser.sh

step "webhooks as a receiver sees them (tests/webhooks.sh: PyPI standardwebhooks pinned in tests/webhooks/requirements.txt)"
bash tests/webhooks.sh

step "schemathesis against latchkey serve (tests/schemathesis.sh, pinned in tests/schemathesis-requirements.txt)"
bash tests/schemathesis.sh

step "the deploy path: template checks (cfn-lint, checkov) and the arm64 Lambda builds"
bash tests/infra.sh

step "all tests passed"
