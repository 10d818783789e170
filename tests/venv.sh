# Sourced by tests/run.sh and the scripts it runs.
#
# `step TEXT` prints a step's heading with the seconds since the test command began (since this
# script began when it runs alone), so a CI log shows where the time went.
: "${LATCHKEY_TEST_STARTED:=$(date +%s)}"
export LATCHKEY_TEST_STARTED
step() { echo "==> [$(( $(date +%s) - LATCHKEY_TEST_STARTED )) s] $*"; }

# `venv DIR REQUIREMENTS` creates a Python virtual
# environment in the project's DIR (installing python3-venv first if a stock Debian lacks it
# and we may) and installs the pinned REQUIREMENTS into it.
venv() {
    local dir=$1 requirements=$2
    if [ ! -x "$dir/bin/python" ]; then
        python3 -m venv "$dir" 2>/dev/null || {
            rm -rf "$dir"
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
            fi
            python3 -m venv "$dir"
        }
    fi
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
}
