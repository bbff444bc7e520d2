#!/usr/bin/env bash
# Runs the whole test suite from nothing: Python deps into .venv, Debian tools the tests use, then ruff and
# pytest. The real gateway (Node 24 + openclaw from the npm registry) is provisioned by the test session
# itself into $CLAWSVC_TEST_CACHE (default /var/cache/clawsvc-test as root), reused across runs.
# `scripts/test.sh --fast [PYTEST ARGS]` skips the real-gateway, real-systemd and bench tests (the fast tier, run by
# $CLAWSVC_TEST_WORKERS pytest-xdist workers, default 4: its tests mostly wait on child processes, not on the CPU).
# Without arguments: the fast tier in parallel, then the slow tier one at a time (heavy, and its tests share the
# provisioned gateway); the exit status is the first failure's. Any other arguments: one serial pytest run with them.
# Any user, any checkout: as a normal user the tests that need root skip with their reason (the systemd ones are all
# root's), and the slow tier provisions the gateway into ~/.cache/clawsvc-test.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022  # what this creates (.venv) is not group-writable whatever the caller's umask (the tests set their own)
venv=${CLAWSVC_VENV:-.venv}

# Only the packages of the tools missing: Debian's npm conflicts with a Node.js installed from elsewhere.
declare -A package=([npm]=npm [setpriv]=util-linux [prlimit]=util-linux [unshare]=util-linux [nsenter]=util-linux
                    [systemd-analyze]=systemd [lsof]=lsof [chromium]=chromium)
missing=()
packages=()
for tool in npm setpriv prlimit unshare nsenter systemd-analyze lsof chromium; do
    if ! command -v "$tool" >/dev/null; then
        missing+=("$tool")
        [[ " ${packages[*]} " == *" ${package[$tool]} "* ]] || packages+=("${package[$tool]}")
    fi
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages for: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
        echo "missing tools: ${missing[*]} (install npm, util-linux, systemd, lsof and chromium)" >&2
        exit 1
    fi
fi
# A real Prometheus (Debian's package; its own service is not started) scrapes clawsvc in the tests.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's prometheus for the metrics tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "missing tools: prometheus, promtool (install Debian's prometheus)" >&2
        exit 1
    fi
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# compat: the editable install is a plain path in a .pth file; the default import hook costs every clawsvc
# start ~25 ms of site-packages work, a third of its own start (BENCHMARKS.md, own-start).
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
"$venv/bin/ruff" check .
"$venv/bin/lint-imports" --no-cache >/dev/null || "$venv/bin/lint-imports" --no-cache
# Bytecode for the package and the test helpers once, not recompiled in each of the hundreds of clawsvc and
# gateway-double processes the tests start (PYTHONDONTWRITEBYTECODE may be set).
"$venv/bin/python" -m compileall -q clawsvc tests >/dev/null
pytest=("$venv/bin/python" -m pytest -q -ra)
slow_markers="realgateway or systemd or bench"
fast_tier=(-m "not ($slow_markers)" -n "${CLAWSVC_TEST_WORKERS:-4}")
if [ "${1:-}" = --fast ]; then
    shift
    exec "${pytest[@]}" "${fast_tier[@]}" "$@"
fi
if (($#)); then
    exec "${pytest[@]}" "$@"
fi
status=0
"${pytest[@]}" "${fast_tier[@]}" || status=$?
slow=0
"${pytest[@]}" -m "$slow_markers" || slow=$?
exit $((status ? status : slow))
