#!/usr/bin/env bash
# The whole test pipeline behind `make test`. Every stage runs even when an earlier one failed, so
# one run shows everything that is wrong; the last line is the summary, and the exit status is
# non-zero when any stage failed. Stage logs go to .build/logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "make test needs root (network namespaces)"; exit 1; }

logs=.build/logs
mkdir -p "$logs"
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
export PYTHONPATH="$PWD/lab"
export PYTHONDONTWRITEBYTECODE=1
passed=0; failed=0; failures=()

stage() {  # stage NAME COMMAND...
  local name=$1; shift
  local start=$SECONDS
  printf '== %-22s ' "$name"
  if "$@" > "$logs/$name.log" 2>&1; then
    passed=$((passed + 1)); printf 'ok      (%ss)\n' $((SECONDS - start))
    grep -E '^[=]+ .*(passed|failed).* in [0-9.]+s' "$logs/$name.log" | tail -1 | sed 's/^/   /'
  else
    failed=$((failed + 1)); failures+=("$name"); printf 'FAILED  (%ss)\n' $((SECONDS - start))
    tail -n 40 "$logs/$name.log" | sed 's/^/   | /'
  fi
}

lab_namespaces() { ip netns list | awk '{print $1}' | grep -E '^mw[a-z0-9]*-' | sort || true; }
# Labs that were up before the run (someone's demo) are not ours to judge.
labs_before=$(lab_namespaces)

pytest_run() { python -m pytest -q -p no:cacheprovider "$@"; }

stage unit            pytest_run tests/unit
stage lab             pytest_run lab/tests
stage lab-integration pytest_run -n 2 --dist loadfile tests/lab
stage sanity-2.21     scripts/sanity.sh .venv
if [[ -x .venv-2.19/bin/ansible-test ]]; then
  stage sanity-2.19   scripts/sanity.sh .venv-2.19
fi
# ansible-lint keeps its own installed copy of this collection under ~/.ansible/collections and
# does not refresh it while galaxy.yml's version is unchanged: a stale copy hides new modules.
rm -rf "$HOME/.ansible/collections/ansible_collections/multiwan/linux"
stage ansible-lint    ansible-lint --profile production --offline
if compgen -G "molecule/*/molecule.yml" >/dev/null; then
  stage molecule      molecule test --all
fi
# Nothing of the lab may outlive the tests.
no_lab_leftovers() {
  local left
  left=$(comm -13 <(echo "$labs_before") <(lab_namespaces) | grep . || true)
  [[ -z $left ]] || { echo "namespaces left behind: $left"; return 1; }
}
stage lab-leftovers   no_lab_leftovers

echo
if ((failed)); then echo "failed stages: ${failures[*]} (logs in $logs/)"; fi
echo "summary: $passed passed, $failed failed"
((failed == 0))
