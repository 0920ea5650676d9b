#!/usr/bin/env bash
# Installs what kuma-vm needs on a Debian machine (as root) and the project venv at .venv. Idempotent.
# Used by the README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev gcc          # the venv; wheels that compile
  postgresql                            # the postgres store's tests start a throwaway server
  debootstrap openssh-client iproute2   # the lab (booted hosts in network namespaces)
  lintian rpmlint rpm                   # packaging: checks of dist/*.deb and dist/*.rpm (tests/e2e/test_packages.py)
  curl
  chromium                              # the GUI's browser tests (tests/integration/test_gui.py)
  prometheus                            # MeshMetric's test: a real Prometheus (kuma_sd_configs), run by the test
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package starts a cluster of its own; the tests start their own throwaway servers instead.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
  fi
  # Likewise Debian's prometheus starts a server on :9090 on a systemd machine: the tests run their own.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus prometheus-node-exporter 2>/dev/null || true
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.kuma-vm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
