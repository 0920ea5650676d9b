#!/usr/bin/env bash
# A multi-zone mesh on booted lab hosts, deployed the way operators deploy it: ansible-playbook
# playbooks/site.yml with the kuma_cp and kuma_dp roles and the .deb packages built from this tree.
#   global control plane; zone-1 (control plane, web, backend with .mesh names in the host's resolver, an
#   ingress); zone-2 (control plane, billing, an ingress); mTLS on; then `curl http://backend.mesh/` and
#   `curl http://billing.mesh/` (zone-2, through its ingress) from a zone-1 host.
# The hosts are network namespaces on 198.18.0.0/15 with their own systemd (tests/lab/README.md); Ctrl-C
# tears them down. Root only (the lab boots hosts with debootstrap, namespaces and overlayfs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "fleet-up: run as root (the lab boots hosts in namespaces)" >&2; exit 1; fi
scripts/setup.sh
exec .venv/bin/python -m tests.lab.fleet "$@"
