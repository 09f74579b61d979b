#!/usr/bin/env bash
# `make demo`: bring up a lab (two schools, two ISPs each), show it and the inventory it made.
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
echo
echo "The lab stays up: try 'PYTHONPATH=lab .venv/bin/python -m mwlab --lab $lab status', remove it with 'make demo-down'."
