#!/usr/bin/env bash
# The README's test command: set up (if needed) and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest exits 5 when it collects no test: that must fail, and it does (set -e), as does any other non-zero code.
# Two worker processes (pytest-xdist): most tests are bound by single-threaded XLA compilation, so two of them run
# side by side on a 2-core machine (≈ 1.4× faster there); MACJAX_TEST_WORKERS=0 runs in one process.
exec .venv/bin/python -m pytest -q -n "${MACJAX_TEST_WORKERS:-2}" "$@"
