# Sourced by tests/run.sh and the scripts it runs.
#
# `step TEXT` prints a step's heading with the seconds since the test command began (since this
# script began when it runs alone), so a CI log shows where the time went.
: "${LATCHKEY_TEST_STARTED:=$(date +%s)}"
export LATCHKEY_TEST_STARTED
step() { echo "==> [$(( $(date +%s) - LATCHKEY_TEST_STARTED )) s] $*"; }

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
# with pip the first time), or nothing where it cannot be installed: then pip installs.
# The venv is built aside and moved into place, so two scripts starting at once never run a
# half-installed uv.
uv_bin() {
    local home=.venv-uv
    local want
    want=$(sed -n 's/^uv==//p' tests/uv-requirements.txt)
    # `uv --version` prints "uv 0.13.9 (...)".
    if [ "$("$home/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
        local aside="$home.$$"
        rm -rf "$aside"
        make_venv "$aside"
        if "$aside/bin/pip" install -q --disable-pip-version-check -r tests/uv-requirements.txt >&2; then
            rm -rf "$home" && mv -T "$aside" "$home" 2>/dev/null || rm -rf "$aside"
        else
            rm -rf "$aside"
            echo "tests/venv.sh: uv could not be installed; pip installs instead (slower)" >&2
            return 0
        fi
    fi
    echo "$PWD/$home/bin/uv"
}

# uv does not read pip's configuration: the index, extra index, local wheels and timeout that
# pip's environment variables name are handed to it, and it trusts the system's certificates
# (where a proxy's own CA would be installed), as pip does with PIP_CERT.
# Nor does it ever download a Python build (from GitHub, which these machines cannot reach).
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}" UV_PYTHON_DOWNLOADS=never
[ -n "${PIP_INDEX_URL:-}" ] && export UV_DEFAULT_INDEX="${UV_DEFAULT_INDEX:-$PIP_INDEX_URL}"
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && export UV_INDEX="${UV_INDEX:-$PIP_EXTRA_INDEX_URL}"
# pip skips a local wheels folder that is not there; uv stops on it, so only those present go.
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -z "${UV_FIND_LINKS:-}" ]; then
    for link in $PIP_FIND_LINKS; do
        case "$link" in
            http://* | https://* | file://*) ;;
            *) [ -e "$link" ] || continue ;;
        esac
        UV_FIND_LINKS="${UV_FIND_LINKS:+$UV_FIND_LINKS,}$link"
    done
    [ -n "${UV_FIND_LINKS:-}" ] && export UV_FIND_LINKS
fi
[ -n "${PIP_DEFAULT_TIMEOUT:-}" ] && export UV_HTTP_TIMEOUT="${UV_HTTP_TIMEOUT:-$PIP_DEFAULT_TIMEOUT}"

# `venv DIR REQUIREMENTS` creates the virtual environment DIR unless it is there and installs the
# pinned REQUIREMENTS into it, both with uv (with python3 -m venv and pip where uv is missing). Bytecode is compiled at install,
# as pip does: these machines set PYTHONDONTWRITEBYTECODE, so a module compiled on import is
# compiled again on every start (checkov's start took 11 s instead of 5.5). uv compiles on
# every core; that, more than its downloads, is where pip's time went.
venv() {
    local dir=$1 requirements=$2 uv
    uv=$(uv_bin)
    if [ -z "$uv" ]; then
        make_venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
        return
    fi
    if [ ! -x "$dir/bin/python" ]; then
        # The system's python3, as `python3 -m venv` would use, in under a second instead of
        # about seven. Without pip (nothing unpinned is fetched): to add a package by hand,
        # `.venv-uv/bin/uv pip install --python DIR/bin/python PACKAGE`.
        rm -rf "$dir"
        "$uv" venv -q --python "$(command -v python3)" "$dir"
    fi
    "$uv" pip install -q --compile-bytecode --python "$dir/bin/python" -r "$requirements"
}
