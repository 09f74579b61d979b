#!/usr/bin/env bash
# Wall time of playbooks/site.yml on lab gateways: a first converge (bare gateway) and a no-op
# rerun, for one site and for five sites at once (forks=5). Prints the figures and the commands.
#   bench/converge.sh [LAB]          (root; default lab mwk; the lab is removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
lab=${1:-mwk}
topology=bench/five-sites.yml
out=.build/bench
mkdir -p "$out"
export PYTHONPATH="$PWD/lab" ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections" ANSIBLE_NOCOLOR=1
mwlab() { .venv/bin/python -m mwlab --lab "$lab" "$@" >/dev/null; }
trap 'mwlab down' EXIT

run() {  # run LABEL ARGS... -> prints seconds, checks the recap
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  .venv/bin/ansible-playbook -i "$out/inventory.yml" playbooks/site.yml "$@" > "$out/$label.log" 2>&1 \
    || { echo "$label failed, see $out/$label.log" >&2; tail -20 "$out/$label.log" >&2; exit 1; }
  end=$(date +%s.%N)
  grep -E '^\S+\s+: ok=' "$out/$label.log" | sed 's/^/    /' > "$out/$label.recap"
  printf '%.1f' "$(echo "$end - $start" | bc)"
}

fresh_lab() { mwlab down; mwlab up "$topology"; .venv/bin/python -m mwlab --lab "$lab" inventory --output "$out/inventory.yml"; }

fresh_lab
one_first=$(run one-first --limit b1)
one_noop=$(run one-noop --limit b1)
fresh_lab
five_first=$(run five-first --forks 5)
five_noop=$(run five-noop --forks 5)

cat <<REPORT
converge benchmark (ansible-core $(.venv/bin/python -c "import ansible.release as r; print(r.__version__)"), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), lab $lab)
  one site, first converge     ${one_first} s
  one site, no-op rerun        ${one_noop} s
  five sites, first converge   ${five_first} s   (forks=5)
  five sites, no-op rerun      ${five_noop} s   (forks=5)
commands (lab from $topology, inventory from 'mwlab inventory'):
  ansible-playbook -i $out/inventory.yml playbooks/site.yml --limit b1
  ansible-playbook -i $out/inventory.yml playbooks/site.yml --forks 5
recaps:
$(for l in one-first one-noop five-first five-noop; do echo "  $l"; cat "$out/$l.recap"; done)
REPORT
