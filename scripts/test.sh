#!/usr/bin/env bash
# The whole test suite: unit, integration (real Envoy, real PostgreSQL), e2e (booted lab hosts; root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
