#!/usr/bin/env bash
# Set up (see setup.sh) and run the main job on the bundled demo model. Output: demo-out/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/longrope-export demo -o "${1:-demo-out}" --force
