#!/usr/bin/env bash
# A multi-zone mesh on seven booted lab hosts, deployed the way operators deploy it: ansible-playbook
# playbooks/site.yml with the kuma_cp and kuma_dp roles and the .deb packages built from this tree.
#   global control plane; zone-1 and zone-2 control planes; one zone ingress per zone; zone-1's service host
#   (trixie: backend with .mesh names in the host's resolver, and web) and zone-2's (bookworm: billing); mTLS on;
#   then `curl http://backend.mesh/` and `curl http://billing.mesh/` (zone-2, through its ingress) from zone-1.
# The inventory is the one users get: `python -m tests.lab status --inventory lab` writes
# playbooks/inventories/lab/hosts.yml from the running lab, next to the committed group_vars/.
# The hosts are network namespaces on 198.18.0.0/15 with their own systemd (tests/lab/README.md); Ctrl-C
# tears them down. Root only (the lab boots hosts with debootstrap, namespaces and overlayfs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "fleet-up: run as root (the lab boots hosts in namespaces)" >&2; exit 1; fi
scripts/setup.sh
exec .venv/bin/python -m tests.lab.fleet "$@"
