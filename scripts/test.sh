#!/usr/bin/env bash
# The README's test command: set up (if needed) and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest exits 5 when it collects no test: that must fail, and it does (set -e), as does any other non-zero code.
exec .venv/bin/python -m pytest -q "$@"
