#!/usr/bin/env bash
# Runs the whole test suite from nothing: Python deps into .venv, Debian tools the tests use, then ruff and
# pytest. The real gateway (Node 24 + openclaw from the npm registry) is provisioned by the test session
# itself into $CLAWSVC_TEST_CACHE (default /var/cache/clawsvc-test as root), reused across runs.
# `scripts/test.sh --fast [PYTEST ARGS]` skips the real-gateway and real-systemd tests (the fast tier, run by
# $CLAWSVC_TEST_WORKERS pytest-xdist workers, default 4: its tests mostly wait on child processes, not on the CPU).
# Without arguments: the fast tier in parallel, then the real-gateway and systemd tests one at a time (heavy, and
# they share the provisioned gateway); the exit status is the first failure's. Any other arguments: one serial
# pytest run with them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CLAWSVC_VENV:-.venv}

missing=()
for tool in npm setpriv prlimit unshare nsenter systemd-analyze lsof chromium; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages for: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm util-linux systemd lsof chromium >/dev/null
    else
        echo "missing tools: ${missing[*]} (install npm, util-linux, systemd, lsof and chromium)" >&2
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
fast_tier=(-m "not realgateway and not systemd" -n "${CLAWSVC_TEST_WORKERS:-4}")
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
"${pytest[@]}" -m "realgateway or systemd" || slow=$?
exit $((status ? status : slow))
