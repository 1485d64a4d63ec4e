#!/usr/bin/env bash
# The main job on embedded synthetic data: installs what it needs, then runs `def-ray demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
exec def-ray demo "$@"
