#!/usr/bin/env bash
# The whole test suite (slow, S3, MLflow, Serve and cluster tests included); installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# tests/serve/test_page.py drives the Serve app's page in a real headless Chromium from the system packages: installed
# here where missing (as root with apt-get, as CI runs); then a missing browser fails that test instead of skipping it
install_chromium() {
  local lists=()
  if ! apt-get update -qq; then  # no usable default package lists: a private lists folder
    mkdir -p /tmp/def_ray_apt_lists/partial
    lists=(-o Dir::State::Lists=/tmp/def_ray_apt_lists)
    apt-get "${lists[@]}" update -qq || return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get "${lists[@]}" install -y -qq --no-install-recommends chromium >/dev/null
}
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the page test" >&2
  install_chromium || echo "chromium could not be installed: tests/serve/test_page.py will fail" >&2
  export DEF_RAY_REQUIRE_BROWSER=1
fi
. .venv/bin/activate
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
exec python -m pytest "$@"
