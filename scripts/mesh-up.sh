#!/usr/bin/env bash
# A whole local mesh on this machine, until Ctrl-C:
#   kuma-cp on the embedded SQLite store (state in .work/mesh),
#   mTLS on (builtin CA) with a MeshTrafficPermission allowing the mesh (examples/*.yaml, kumactl apply),
#   three demo services, web -> backend -> db (examples/demo_app.py), each behind its own kuma-dp and real
#   Envoy, registered from examples/dataplanes/*.yaml with a token from kumactl generate dataplane-token,
#   then a request that crosses the mesh twice, printing at each hop the caller identity the callee saw
#   (the SPIFFE URI in x-forwarded-client-cert, set by the callee's Envoy after the mTLS handshake).
# Ctrl-C stops what this script started, by PID: kuma-dps (their Envoys drain), apps, then kuma-cp.
# Ports: kuma-cp's defaults (KUMA_API_SERVER_HTTP_PORT etc. override them), apps 18001-18003, Envoy inbounds
# 15001-15003, outbounds 10002-10003 (examples/dataplanes/*.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
set -m  # each process started below gets its own process group: Ctrl-C reaches this script only, which then
        # stops them in order (a kuma-dp hit by the terminal's SIGINT *and* our SIGTERM would skip its drain)

WORK=${MESH_UP_WORK_DIR:-$PWD/.work/mesh}
LOGS=$WORK/logs
mkdir -p "$WORK" "$LOGS"
export KUMA_GENERAL_WORK_DIR=$WORK/cp KUMA_STORE_TYPE=sqlite
export KUMA_API_SERVER_HTTP_PORT=${KUMA_API_SERVER_HTTP_PORT:-5681}
export KUMA_DIAGNOSTICS_SERVER_PORT=${KUMA_DIAGNOSTICS_SERVER_PORT:-5680}
export KUMA_DP_SERVER_PORT=${KUMA_DP_SERVER_PORT:-5678}
export KUMACTL_CONFIG=$WORK/kumactl.config  # this script's own kumactl context, not ~/.kumactl
BIN=$PWD/.venv/bin
SERVICES=(web backend db)
declare -A APP_PORT=([web]=18001 [backend]=18002 [db]=18003)
declare -A UPSTREAM=([web]=http://127.0.0.1:10002 [backend]=http://127.0.0.1:10003 [db]=)

cp_pid=""
app_pids=()
dp_pids=()
stopping=0
stop_all() {  # SIGTERM to each PID, then wait for all of them
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
stop() {
  ((stopping)) && return
  stopping=1
  echo
  echo "--- stopping (only the processes this script started): kuma-dps drain their Envoys, then apps, kuma-cp"
  stop_all ${dp_pids[@]+"${dp_pids[@]}"}
  stop_all ${app_pids[@]+"${app_pids[@]}"}
  stop_all $cp_pid
  echo "stopped; logs in $LOGS"
}
trap stop EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$KUMA_API_SERVER_HTTP_PORT" "$KUMA_DP_SERVER_PORT" "$KUMA_DIAGNOSTICS_SERVER_PORT" 18001 18002 18003 \
         15001 15002 15003 10002 10003; do
  port_free "$p" || { echo "port $p on 127.0.0.1 is in use (another mesh-up or kuma-cp?): stop that first" >&2; exit 1; }
done

wait_for() {  # wait_for URL WHAT PID
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null "$1" && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 exited; its log:" >&2; tail -20 "$LOGS/$2.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$2 not ready after 30s; its log:" >&2; tail -20 "$LOGS/$2.log" >&2; exit 1
}

echo "--- kuma-cp (SQLite store in $WORK/cp; log $LOGS/kuma-cp.log)"
"$BIN/kuma-cp" run >"$LOGS/kuma-cp.log" 2>&1 &
cp_pid=$!
wait_for "http://127.0.0.1:$KUMA_DIAGNOSTICS_SERVER_PORT/ready" kuma-cp "$cp_pid"
"$BIN/kumactl" config control-planes add --name mesh-up --address "http://127.0.0.1:$KUMA_API_SERVER_HTTP_PORT" \
  --overwrite >/dev/null

echo "--- kumactl apply: mTLS on the default mesh, and a permission for the whole mesh"
"$BIN/kumactl" apply -f examples/mesh-mtls.yaml
"$BIN/kumactl" apply -f examples/allow-all.yaml

for svc in "${SERVICES[@]}"; do
  name=$svc-1
  "$BIN/python" examples/demo_app.py --name "$svc" --port "${APP_PORT[$svc]}" \
    ${UPSTREAM[$svc]:+--upstream "${UPSTREAM[$svc]}"} >"$LOGS/$svc-app.log" 2>&1 &
  app_pids+=($!)
  "$BIN/kumactl" generate dataplane-token --mesh default --name "$name" --valid-for 24h >"$WORK/$name.token"
  chmod 600 "$WORK/$name.token"
  echo "--- kuma-dp $name: Envoy for $svc (definition examples/dataplanes/$svc.yaml; log $LOGS/$name.log)"
  "$BIN/kuma-dp" run \
    --cp-address "https://127.0.0.1:$KUMA_DP_SERVER_PORT" --ca-cert-file "$WORK/cp/tls/ca.crt" \
    --dataplane-file "examples/dataplanes/$svc.yaml" --dataplane-var "name=$name" --dataplane-var address=127.0.0.1 \
    --dataplane-token-file "$WORK/$name.token" --runtime-dir "$WORK/run/$name" \
    --drain-time 2s --envoy-log-level warning >"$LOGS/$name.log" 2>&1 &
  dp_pids+=($!)
done
for i in "${!SERVICES[@]}"; do
  name=${SERVICES[i]}-1
  for _ in $(seq 1 300); do [ -s "$WORK/run/$name/readiness-address" ] && break; sleep 0.1; done
  wait_for "http://$(cat "$WORK/run/$name/readiness-address" 2>/dev/null || echo 127.0.0.1:1)/ready" "$name" \
    "${dp_pids[i]}"
done

for _ in $(seq 1 50); do  # online once each Envoy's ADS stream is recorded
  [ "$("$BIN/kumactl" inspect dataplanes | grep -c ' online ')" -ge ${#SERVICES[@]} ] && break
  sleep 0.2
done
echo "--- kumactl inspect dataplanes"
"$BIN/kumactl" inspect dataplanes

echo "--- a request into web, crossing the mesh twice (web -> backend -> db, mTLS at each hop)"
echo "\$ curl http://127.0.0.1:${APP_PORT[web]}/trace"
for _ in $(seq 1 50); do  # the first request can race the last certificate push
  out=$(curl -fs "http://127.0.0.1:${APP_PORT[web]}/trace") && ! grep -q "upstream failed" <<<"$out" && break
  sleep 0.2
done
echo "$out"

echo
echo "The mesh is running; Ctrl-C stops it. Try:"
try() { printf '  %-58s # %s\n' "$1" "$2"; }
try "curl http://127.0.0.1:${APP_PORT[web]}/trace" "the request above, again"
try "curl http://127.0.0.1:${APP_PORT[backend]}/" "backend called directly: no caller identity"
try "curl http://127.0.0.1:15002/" "backend's Envoy without a client certificate: refused"
try "KUMACTL_CONFIG=$KUMACTL_CONFIG .venv/bin/kumactl get dataplanes" "the registered dataplanes"
for svc in "${SERVICES[@]}"; do
  try "curl http://$(cat "$WORK/run/$svc-1/readiness-address")/metrics" "$svc-1: Envoy's stats and kuma-dp's"
done
wait "$cp_pid"
