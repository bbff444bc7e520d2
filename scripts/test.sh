#!/usr/bin/env bash
# Runs the whole test suite from nothing: Python deps into .venv, Debian tools the tests use, then ruff and
# pytest. The real gateway (Node 24 + openclaw from the npm registry) is provisioned by the test session
# itself into $CLAWSVC_TEST_CACHE (default /var/cache/clawsvc-test as root), reused across runs.
# `scripts/test.sh --fast [PYTEST ARGS]` skips the real-gateway and real-systemd tests (the fast tier);
# any other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CLAWSVC_VENV:-.venv}

missing=()
for tool in npm setpriv prlimit unshare nsenter systemd-analyze lsof; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages for: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm util-linux systemd lsof >/dev/null
    else
        echo "missing tools: ${missing[*]} (install npm, util-linux, systemd and lsof)" >&2
        exit 1
    fi
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/lint-imports" --no-cache >/dev/null || "$venv/bin/lint-imports" --no-cache
fast=()
if [ "${1:-}" = --fast ]; then
    shift
    fast=(-m "not realgateway and not systemd")
fi
"$venv/bin/python" -m pytest -q -ra "${fast[@]}" "$@"
