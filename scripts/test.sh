#!/usr/bin/env bash
# The whole test suite: unit, integration (real Envoy, real PostgreSQL), e2e (booted lab hosts; root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The slowest tests at the end of the log: where a run that grows past 30 minutes spends its time.
exec .venv/bin/python -m pytest -q --durations=25 "$@"
