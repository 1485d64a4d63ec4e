#!/usr/bin/env bash
# The whole test suite (slow, S3, MLflow, Serve and cluster tests included); installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
exec python -m pytest "$@"
