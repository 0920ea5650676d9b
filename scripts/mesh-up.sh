#!/usr/bin/env bash
# Runs kuma-cp on the embedded SQLite store (state in .work/mesh), shows it working, and keeps it running
# until Ctrl-C. Later issues grow this into a whole local mesh (kuma-dp + Envoy per service).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

WORK=${KUMA_GENERAL_WORK_DIR:-$PWD/.work/mesh}
mkdir -p "$WORK"
export KUMA_GENERAL_WORK_DIR=$WORK KUMA_STORE_TYPE=sqlite
.venv/bin/kuma-cp run &
cp_pid=$!
stop() { kill -TERM "$cp_pid" 2>/dev/null || true; wait "$cp_pid" 2>/dev/null || true; }
trap stop EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:5680/ready >/dev/null 2>&1 && break
  kill -0 "$cp_pid" 2>/dev/null || { echo "kuma-cp exited; see its log above" >&2; exit 1; }
  sleep 0.2
done

echo "--- kumactl get meshes"
.venv/bin/kumactl get meshes
echo "--- kumactl apply (a dataplane for service web)"
.venv/bin/kumactl apply -f - <<'YAML'
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 18080
    servicePort: 8080
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
YAML
.venv/bin/kumactl inspect dataplanes
echo "kuma-cp is running (API http://127.0.0.1:5681, state in $WORK); Ctrl-C stops it"
wait "$cp_pid"
