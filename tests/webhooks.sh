#!/usr/bin/env bash
# Webhooks as a receiver sees them: pytest (pinned in tests/webhooks/requirements.txt, installed
# into .venv-webhooks/) drives `latchkey serve` (embedded) and a receiver on loopback that
# verifies every delivery with the Standard Webhooks reference library (PyPI `standardwebhooks`):
# signature, timestamp, id; retries through 429 and 500; a receiver down across a kill and
# restart of `latchkey serve`; one id per event; no secret in any body. Logs go to
# target/webhooks/.
#
# tests/run.sh runs this; it also runs alone: `bash tests/webhooks.sh` (extra arguments go to
# pytest, e.g. `-k restart`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/venv.sh

step "pytest and standardwebhooks in .venv-webhooks/ from tests/webhooks/requirements.txt"
venv .venv-webhooks tests/webhooks/requirements.txt

step "the latchkey command, as cargo test builds it (build_binaries, tests/venv.sh)"
build_binaries
export LATCHKEY_BIN="${CARGO_TARGET_DIR:-target}/debug/latchkey"
export PYTHONDONTWRITEBYTECODE=1

step "pytest tests/webhooks"
.venv-webhooks/bin/python -m pytest -p no:cacheprovider -q tests/webhooks "$@"
