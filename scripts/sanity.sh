#!/usr/bin/env bash
# ansible-test sanity on the collection as it would be published, with one ansible-core.
#   scripts/sanity.sh VENV_DIR
# The collection is built with `ansible-galaxy collection build` (so build_ignore in galaxy.yml
# decides what is in it), unpacked into .build/sanity-<venv>/ansible_collections/multiwan/linux,
# and checked there with --venv for every target Python found on this machine.
# Ignore files are not used: every finding fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: sanity.sh VENV_DIR}
name=$(basename "$venv")
root=.build/sanity-$name
tree=$root/ansible_collections/multiwan/linux
rm -rf "$root"
mkdir -p "$tree" "$root/dist"
"$venv/bin/ansible-galaxy" collection build --force --output-path "$root/dist" . >/dev/null
tar -xzf "$root"/dist/multiwan-linux-*.tar.gz -C "$tree"

# Real interpreters for the target-side tests (compile, import) on every Python this machine has;
# pyenv shims are left out because they fail for versions that are not selected.
extra_path=""
for dir in "$HOME"/.pyenv/versions/3.*/bin; do
  [[ -d $dir ]] && extra_path="$extra_path:$dir"
done
pythons=()
for v in 3.9 3.10 3.11 3.12 3.13 3.14; do
  for dir in "$HOME"/.pyenv/versions/$v.*/bin /usr/bin; do
    if [[ -x $dir/python$v ]]; then pythons+=("$v"); break; fi
  done
done
controller=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cd "$tree"
# A git repository makes ansible-test consider exactly the files of the built collection.
# tests/output is where ansible-test puts its own venvs: never part of what is checked.
printf '/tests/output/\n' > .gitignore
git init -q . && git add -A >/dev/null && git -c user.name=ci -c user.email=ci@localhost commit -qm sanity
export PATH="${PATH}${extra_path}"
version=$("$OLDPWD/$venv/bin/ansible" --version)
echo "sanity with ${version%%$'\n'*}, controller $controller, targets ${pythons[*]}"
"$OLDPWD/$venv/bin/ansible-test" sanity --venv --color no --python "$controller" \
  "${@:2}"
for v in "${pythons[@]}"; do
  [[ $v == "$controller" ]] && continue
  "$OLDPWD/$venv/bin/ansible-test" sanity --venv --color no --python "$v" --test compile --test import \
    --allow-disabled "${@:2}"
done
