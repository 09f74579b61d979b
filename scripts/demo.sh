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
# systemd mode: each gateway boots Debian under systemd-nspawn, so the role's watchdog unit runs
# for real (the first run on a machine builds the Debian image, a few minutes, cached after).
mwlab up --systemd "$topology"
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
first_site=${sites%% *}
first_uplink=$(.venv/bin/python - "$lab" "$first_site" <<'PY'
import sys
from mwlab import Lab
site = next(s for s in Lab(sys.argv[1]).topology.sites if s.name == sys.argv[2])
print(site.uplinks[0].name)
PY
)
echo; echo "== $first_site: the failover watchdog (multiwan status on the gateway)"
mwlab exec "$first_site" gw -- multiwan status
echo; echo "== $first_site: $first_uplink's ISP dies beyond its router (nothing on the gateway's link changes)"
mwlab fail "$first_site" "$first_uplink" --mode upstream
sleep 2
mwlab exec "$first_site" gw -- multiwan status
mwlab exec "$first_site" gw -- ip route show default
echo; echo "== $first_site: 300 new flows now leave by the surviving uplinks only"
mwlab traffic "$first_site" --flows 300 --proto udp
echo; echo "== $first_site: $first_uplink's ISP is back; after 20 good probe rounds (3 s) it is used again"
mwlab restore "$first_site" "$first_uplink"
sleep 5
mwlab exec "$first_site" gw -- multiwan status
echo
echo "The lab stays up: try 'PYTHONPATH=lab .venv/bin/python -m mwlab --lab $lab traffic s1 --proto tcp',"
echo "run the playbook again (nothing changes), remove the lab with 'make demo-down'."
