#!/usr/bin/env bash
# GPU readiness check (see benchmarks/gpu_check.py): one GPU, under 8 minutes, no downloads; --tiny runs on CPU.
set -euo pipefail
exec python "$(dirname "$0")/gpu_check.py" "$@"
