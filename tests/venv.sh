# Sourced by tests/run.sh and the scripts it runs.
#
# `step TEXT` prints a step's heading with the seconds since the test command began (since this
# script began when it runs alone), so a CI log shows where the time went.
: "${LATCHKEY_TEST_STARTED:=$(date +%s)}"
export LATCHKEY_TEST_STARTED
step() { echo "==> [$(( $(date +%s) - LATCHKEY_TEST_STARTED )) s] $*"; }

# One package selection and feature set for every cargo build of the test command, the client's
# `lambda` feature included: cargo resolves features per command, and a command that selected
# other packages or features would rebuild what the first one built.
test_flags=(--workspace --locked --features latchkey-client/lambda)

# `build_binaries` builds target/debug/latchkey (the `latchkey` command the scripts serve) and the
# six functions' binaries (tests/lambda_invoke.py) with the features tests/run.sh's `cargo test`
# resolves: the `cli` test target makes cargo resolve them with the dev-dependencies, so after
# `cargo test` only the six small function packages compile (about 15 s), once. A `cargo build
# --bin latchkey` instead resolved features without the dev-dependencies (latchkey's
# `conformance`, tokio's `test-util`...) and compiled the library again: 202 s of a CI run.
build_binaries() { cargo build "${test_flags[@]}" --quiet --bins --test cli; }

# `make_venv DIR` creates a Python virtual environment in the project's DIR unless it is there,
# installing python3-venv first if a stock Debian lacks it and we may: uv's own (.venv-uv/), or
# every one where uv could not be installed.
make_venv() {
    local dir=$1
    if [ ! -x "$dir/bin/python" ]; then
        python3 -m venv "$dir" 2>/dev/null || {
            rm -rf "$dir"
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
            fi
            python3 -m venv "$dir"
        }
    fi
}

# `uv_bin` prints the path of uv (pinned in tests/uv-requirements.txt, installed into .venv-uv/
# with pip the first time), or nothing where it cannot be installed: then pip installs (and
# LATCHKEY_NO_UV, set by `venv`, keeps later calls from trying again). Called by `venv` under
# its lock.
uv_bin() {
    [ -z "${LATCHKEY_NO_UV:-}" ] || return 0
    local home=.venv-uv want
    want=$(sed -n 's/^uv==//p' tests/uv-requirements.txt)
    # `uv --version` prints "uv 0.13.9 (...)".
    if [ "$("$home/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
        rm -rf "$home"
        make_venv "$home"
        if ! "$home/bin/pip" install -q --disable-pip-version-check -r tests/uv-requirements.txt >&2; then
            rm -rf "$home"
            echo "tests/venv.sh: uv could not be installed; pip installs instead (slower)" >&2
            return 0
        fi
    fi
    echo "$PWD/$home/bin/uv"
}

# uv does not read pip's configuration: the index, extra indexes (searched together, as pip
# does), local wheels, certificate bundle (in `venv_locked`) and timeout that pip's environment
# variables name are handed to it, and it also trusts the system's certificates (where a
# proxy's own CA would be installed). Nor does it ever download a Python build (from GitHub,
# which these machines cannot reach).
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}" UV_PYTHON_DOWNLOADS=never
[ -n "${PIP_INDEX_URL:-}" ] && export UV_DEFAULT_INDEX="${UV_DEFAULT_INDEX:-$PIP_INDEX_URL}"
if [ -n "${PIP_EXTRA_INDEX_URL:-}" ]; then
    export UV_INDEX="${UV_INDEX:-$PIP_EXTRA_INDEX_URL}" UV_INDEX_STRATEGY="${UV_INDEX_STRATEGY:-unsafe-best-match}"
fi
# uv takes whole seconds.
pip_timeout=${PIP_DEFAULT_TIMEOUT:-}
pip_timeout=${pip_timeout%%.*}
[ -n "$pip_timeout" ] && export UV_HTTP_TIMEOUT="${UV_HTTP_TIMEOUT:-$pip_timeout}"
unset pip_timeout
# pip skips a local wheels folder that is not there; uv stops on it, so only those present go.
uv_find_links() {
    local link links=() kept=""
    read -r -a links <<< "$PIP_FIND_LINKS"
    for link in "${links[@]}"; do
        case "$link" in
            http://* | https://*) ;;
            file://*) [ -e "${link#file://}" ] || continue ;;
            *) [ -e "$link" ] || continue ;;
        esac
        kept="${kept:+$kept,}$link"
    done
    echo "$kept"
}
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -z "${UV_FIND_LINKS:-}" ]; then
    UV_FIND_LINKS=$(uv_find_links)
    if [ -n "$UV_FIND_LINKS" ]; then export UV_FIND_LINKS; else unset UV_FIND_LINKS; fi
fi

# `venv DIR REQUIREMENTS` creates the virtual environment DIR unless it is there and installs the
# pinned REQUIREMENTS into it, both with uv (with python3 -m venv and pip where uv is missing).
# Bytecode is compiled at install, as pip does: these machines set PYTHONDONTWRITEBYTECODE, so a
# module compiled on import is compiled again on every start (checkov's start took 11 s instead
# of 5.5). uv compiles on every core; that, more than its downloads, is where pip's time went.
# One `venv` at a time (a lock on .venv.lock, where flock exists): two scripts or test binaries
# starting together neither install uv twice nor make one environment twice.
venv() {
    local rc=0
    if command -v flock > /dev/null; then
        (flock 9 && venv_locked "$@") 9> .venv.lock || rc=$?
    else
        (venv_locked "$@") || rc=$?
    fi
    # A uv that could not be installed is not tried again for the next environment.
    [ -x .venv-uv/bin/uv ] || export LATCHKEY_NO_UV=1
    return "$rc"
}

# What `venv` does under its lock. Each step's failure is returned explicitly: `set -e` does not
# apply inside a command whose status is tested.
venv_locked() {
    local dir=$1 requirements=$2 uv
    # pip's certificate bundle, for uv only (this subshell's): exported to the scripts that
    # source this file, it would replace the bundle of everything they run.
    [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ] && export SSL_CERT_FILE="$PIP_CERT"
    uv=$(uv_bin)
    if [ -z "$uv" ]; then
        # An environment uv made has no pip: made again by python3 -m venv.
        [ -x "$dir/bin/pip" ] || rm -rf "$dir"
        make_venv "$dir" || return
        "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
        return
    fi
    if [ ! -x "$dir/bin/python" ]; then
        # The system's python3, as `python3 -m venv` would use, in under a second instead of
        # about seven. Without pip (nothing unpinned is fetched): to add a package by hand,
        # `.venv-uv/bin/uv pip install --python DIR/bin/python PACKAGE`.
        rm -rf "$dir"
        "$uv" venv -q --python "$(command -v python3)" "$dir" || return
    fi
    "$uv" pip install -q --compile-bytecode --python "$dir/bin/python" -r "$requirements"
}
