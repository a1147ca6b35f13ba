#!/usr/bin/env bash
# Set up and run the end-to-end demo on videos it makes itself: bash scripts/demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/demo.py "$@"
