#!/usr/bin/env bash
# Set-up for the end-to-end layer: wrk (Debian's package) and uvicorn with uvloop + httptools in the venv.
# Usage: bash benchmarks/setup.sh [path/to/python]   (default: .venv/bin/python)
# Without wrk the benchmark falls back to a Python load generator and says so in its table.
set -eu
python=${1:-.venv/bin/python}
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq wrk
  else
    echo "wrk is missing and cannot be installed here (needs root and apt-get); the Python load generator will be used" >&2
  fi
fi
"$python" -c "import uvicorn, uvloop, httptools" 2>/dev/null || "$python" -m pip install -q "uvicorn[standard]"
command -v wrk >/dev/null 2>&1 && wrk -v 2>&1 | head -n 1 || true
