#!/usr/bin/env bash
# Build the documentation site into site/ in strict mode: a broken link or anchor, a missing reference,
# a missing sample file or any other warning fails.  `scripts/docs.sh serve` serves it on 127.0.0.1:8000
# instead, rebuilt on every change.  Needs the `docs` extra (pip install -e ".[docs]"; the dev extra has it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then  # the project's .venv (scripts/test.sh's), made if missing
    [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
if ! python -c "import mkdocs, material, mkdocstrings_handlers.python, griffe_sphinx" 2>/dev/null; then
    echo "docs: installing the docs extra" >&2
    python -m pip install -q -e ".[docs]" 2>&1 | grep -v "^WARNING: Location" || true
fi
export NO_MKDOCS_2_WARNING=1  # Material's notice about its successor, printed on every build
if [ "${1:-}" = "serve" ]; then
    shift
    exec python -m mkdocs serve --dev-addr 127.0.0.1:8000 "$@"
fi
python -m mkdocs build --strict "$@"
