#!/usr/bin/env bash
# The connect page in a real browser: pytest + Selenium (pinned in tests/browser/requirements.txt,
# installed into .venv-browser/) driving Debian's headless chromium and chromedriver, against
# `latchkey serve` and oidc-provider (tests/oauth), all on loopback. libfaketime moves the clock of
# a second `latchkey serve` for the link-expiry test. Screenshots of every screen go to
# target/screenshots/<test>/ (not committed), the servers' logs to target/browser/.
#
# tests/run.sh runs this; it also runs alone: `bash tests/browser.sh` (extra arguments go to
# pytest, e.g. `-k popup`). Debian packages are installed when missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/venv.sh

missing=()
command -v chromium > /dev/null || missing+=(chromium)
command -v chromedriver > /dev/null || missing+=(chromium-driver)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 > /dev/null 2>&1 || missing+=(libfaketime)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        step "apt-get install ${missing[*]}"
        apt-get update -q > /dev/null && apt-get install -y -q "${missing[@]}" > /dev/null
    else
        echo "missing Debian packages: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
        exit 1
    fi
fi
step "$(chromium --version 2>/dev/null); $(chromedriver --version | cut -d' ' -f1-2)"

step "pytest and Selenium in .venv-browser/ from tests/browser/requirements.txt"
venv .venv-browser tests/browser/requirements.txt

if [ ! -d tests/oauth/node_modules/oidc-provider ]; then
    step "oidc-provider in tests/oauth/node_modules"
    npm ci --prefix tests/oauth --no-audit --no-fund --loglevel=error
fi

step "the latchkey command, as cargo test builds it (build_binaries, tests/venv.sh)"
build_binaries
export LATCHKEY_BIN="${CARGO_TARGET_DIR:-target}/debug/latchkey"
export PYTHONDONTWRITEBYTECODE=1

step "pytest tests/browser (screenshots: target/screenshots/)"
.venv-browser/bin/python -m pytest -p no:cacheprovider -q tests/browser "$@"
