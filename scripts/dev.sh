#!/usr/bin/env bash
# Sets up and runs clawsvc in the foreground against a real gateway: clawsvc into .venv, Node 24 and openclaw
# from the npm registry into $CLAWSVC_DEV_CACHE (default ~/.cache/clawsvc), a ready-made config from
# etc/clawsvc-dev.yaml with gateway.command filled in, then `clawsvc run`. Ctrl-C stops clawsvc and the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
# What this creates (.venv, the cache, the config, ~/.local/state/clawsvc-dev) must not be group-writable, whatever
# the caller's umask: clawsvc refuses a config, gateway or state dir another user could change.
umask 022
venv=${CLAWSVC_VENV:-.venv}
cache=${CLAWSVC_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawsvc}

command -v npm >/dev/null || { echo "npm is needed to fetch Node 24 and openclaw: apt-get install npm" >&2; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# compat: the editable install is a plain path in a .pth file; the default import hook costs every clawsvc
# start ~25 ms of site-packages work, a third of its own start (BENCHMARKS.md, own-start).
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e . --config-settings editable_mode=compat

mkdir -p "$cache"
command_line=$("$venv/bin/clawsvc" gateway-install --prefix "$cache/gateway" | grep -E '^ +command:')
config="$cache/clawsvc-dev.yaml"
while IFS= read -r line; do
    if [[ $line =~ ^\ +command: ]]; then printf '%s\n' "$command_line"; else printf '%s\n' "$line"; fi
done < etc/clawsvc-dev.yaml > "$config"
"$venv/bin/clawsvc" check-config -c "$config"
echo "running: clawsvc run -c $config   (status: $venv/bin/clawsvc status -c $config)"
exec "$venv/bin/clawsvc" run -c "$config"
