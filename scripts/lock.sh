#!/usr/bin/env bash
# Refresh the committed versions that scripts/test.sh installs (requirements/*.lock) to the newest
# releases the ranges in pyproject.toml allow, for every Python we claim (uv's universal resolution).
# Then run scripts/test.sh (and .ci/run) before committing the new locks.
# Usage: scripts/lock.sh [uv pip compile options, e.g. --upgrade-package httpx2==2.16.2]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
tools=.cache/tools
if [ ! -x "$tools/bin/uv" ]; then
    "$PY" -m venv "$tools"
    "$tools/bin/python" -m pip install -q -r requirements/tools.txt
fi
uv=$tools/bin/uv
compile=("$uv" pip compile --quiet --universal --python-version 3.11 --upgrade --no-header --annotation-style line)
# the project and its adapters are installed editable by scripts/test.sh, never from the lock
local_packages=(--no-emit-package scoped-clients)
for adapter in adapters/*/; do
    local_packages+=(--no-emit-package "scoped-clients-$(basename "$adapter")")
done
"${compile[@]}" "${local_packages[@]}" "$@" requirements/test.in -o requirements/test.lock
"${compile[@]}" --no-deps requirements/model.in -o requirements/model.lock
"${compile[@]}" "${local_packages[@]}" -c requirements/test.lock requirements/vendor-suites.in \
    -o requirements/vendor-suites.lock
echo "lock: requirements/test.lock, model.lock and vendor-suites.lock refreshed; now run scripts/test.sh"
