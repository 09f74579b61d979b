#!/usr/bin/env bash
# `make demo`: bring up a lab (two schools, two ISPs each), configure both gateways with
# playbooks/site.yml (the multiwan.linux.gateway role) against the lab's inventory, then send
# traffic from each school's LAN client and show how the flows split across the uplinks.
set -euo pipefail
cd "$(dirname "$0")/.."
lab=${1:-mwl}
topology=${2:-lab/topologies/two-sites.yml}
export PYTHONPATH="$PWD/lab" ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
mwlab() { .venv/bin/python -m mwlab --lab "$lab" "$@"; }
mkdir -p .build/demo
echo "== bringing up lab '$lab' from $topology"
mwlab up "$topology"
echo; echo "== status"
mwlab status
mwlab inventory --output .build/demo/inventory.yml
echo; echo "== inventory (.build/demo/inventory.yml)"
cat .build/demo/inventory.yml
echo; echo "== ansible-playbook -i .build/demo/inventory.yml playbooks/site.yml"
.venv/bin/ansible-playbook -i .build/demo/inventory.yml playbooks/site.yml
sites=$(.venv/bin/python - "$lab" <<'PY'
import sys
from mwlab import Lab
print(" ".join(s.name for s in Lab(sys.argv[1]).topology.sites))
PY
)
for site in $sites; do
  echo; echo "== $site: policy rules and main table on the gateway"
  mwlab exec "$site" gw -- ip rule show
  mwlab exec "$site" gw -- ip route show
  echo; echo "== $site: 1000 short UDP flows from the LAN client, by the uplink the internet saw them from"
  mwlab traffic "$site" --flows 1000 --proto udp
done
echo
echo "The lab stays up: try 'PYTHONPATH=lab .venv/bin/python -m mwlab --lab $lab traffic s1 --proto tcp',"
echo "run the playbook again (nothing changes), remove the lab with 'make demo-down'."
