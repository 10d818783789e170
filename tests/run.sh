#!/usr/bin/env bash
# Installs every test dependency into the project's own folders and runs every test.
# This is the README's test command; .ci/run calls it and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked

echo "==> the black-box suite again, against the router served in-process"
LATCHKEY_TEST_TRANSPORT=in-process cargo test --locked --test serve_api
