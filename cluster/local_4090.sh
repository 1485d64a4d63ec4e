#!/usr/bin/env bash
# A one-machine Ray cluster on a single-GPU box (phase 1: one RTX 4090), for `ray job submit` and the dashboard.
#
#   bash cluster/local_4090.sh start     # head node with this machine's GPU and CPUs; dashboard on 127.0.0.1:8265
#   bash cluster/local_4090.sh status    # `ray status`: nodes, CPUs/GPUs in use, pending demands
#   bash cluster/local_4090.sh stop      # stops every Ray process this machine started (running jobs die)
#
# Then, from the repository root (the working dir is uploaded with each job, so edits need no reinstall):
#   export RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token
#   ray job submit --working-dir . -- python jobs/train_diffusion.py --config configs/diffusion_4090.yaml
#
# configs/diffusion_4090.yaml asks for 1 GPU worker with train.cpus_per_worker = 8 CPUs; Ray Data needs CPUs beyond
# those, so the box should have at least 10 cores (DEF_RAY_NUM_CPUS overrides the count Ray sees).
# The dashboard listens on loopback only, and token authentication is on: the token is created once in
# ~/.ray/auth_token; clients of the same user read it from there when RAY_AUTH_MODE=token is set (without it the
# ray CLI fails with "Authentication required"); the dashboard page asks for it once (`ray get-auth-token`).
# RAY_AUTH_MODE=disabled in the environment starts the cluster without authentication.
set -euo pipefail

NUM_CPUS=${DEF_RAY_NUM_CPUS:-$(nproc)}
DASHBOARD_PORT=${DEF_RAY_DASHBOARD_PORT:-8265}
METRICS_PORT=${DEF_RAY_METRICS_PORT:-8080}
if [ "${RAY_AUTH_MODE:-token}" != "disabled" ]; then
  export RAY_AUTH_MODE=token
fi

case "${1:-start}" in
  start)
    command -v ray > /dev/null || { echo "ray not found: run 'bash scripts/install.sh' and '. .venv/bin/activate'" >&2; exit 1; }
    if ! nvidia-smi -L > /dev/null 2>&1; then
      echo "no NVIDIA GPU visible (nvidia-smi failed); this script is for a single-GPU box" >&2
      exit 1
    fi
    if [ "$RAY_AUTH_MODE" = "token" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
      ray get-auth-token --generate > /dev/null
    fi
    ray start --head --num-gpus=1 --num-cpus="$NUM_CPUS" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --metrics-export-port="$METRICS_PORT" --disable-usage-stats
    echo
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "ray job submit --working-dir . -- python jobs/train_diffusion.py --config configs/diffusion_4090.yaml"
    ;;
  status)
    ray status
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: $0 [start|status|stop]" >&2
    exit 2
    ;;
esac
