#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LONGROPE_COMPAT_PYTHON="$PWD/.venv-hf457/bin/python" LONGROPE_REQUIRE_COMPAT=1 LONGROPE_REQUIRE_LLAMA_CPP=1
exec .venv/bin/python -m pytest "$@"
