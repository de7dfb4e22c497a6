#!/usr/bin/env bash
# Check prunelab on this machine's GPU (under 8 minutes on one modern GPU); --cpu for the tiny CPU form.
# Prints a summary table (Markdown) at the end; exit status 1 if a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PY" bench/gpu_check.py "$@"
