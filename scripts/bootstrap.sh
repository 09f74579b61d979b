#!/usr/bin/env bash
# Idempotent set-up for `make test` and `make demo` on a fresh machine:
#   - the Debian packages the lab and the modules need (installed only when missing);
#   - .venv: the newest Python >= 3.12 with requirements.txt (ansible-core 2.21), or, where only
#     Python 3.11 exists, requirements-2.19.txt (ansible-core 2.19);
#   - .venv-2.19: Python 3.11 with ansible-core 2.19 for the second sanity run;
#   - the offline stand-in for ansible-test's get-pip download.
# Each venv is rebuilt only when its requirements file changed (a stamp holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# -- Debian packages -----------------------------------------------------------------------------
APT_PACKAGES=(iproute2 nftables conntrack iputils-ping procps util-linux kmod rsync)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- Python interpreters -------------------------------------------------------------------------
# Real interpreters only (pyenv shims fail for versions that are not selected).
candidates() {
  local minor=$1
  for p in "python3.$minor" "/usr/bin/python3.$minor" "/usr/local/bin/python3.$minor" \
           "$HOME"/.pyenv/versions/3."$minor".*/bin/python3."$minor"; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      command -v "$p"; return 0
    fi
  done
  return 1
}
find_python() {  # newest first among the given minors
  local m
  for m in "$@"; do candidates "$m" && return 0; done
  return 1
}

make_venv() {  # make_venv DIR PYTHON REQUIREMENTS
  local dir=$1 python=$2 req=$3 stamp
  stamp="$(sha256sum "$req" | cut -c1-16) $("$python" -c 'import sys; print(sys.version.split()[0])')"
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then return 0; fi
  log "building $dir with $python from $req"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  mkdir -p .build
  "$dir/bin/pip" install --disable-pip-version-check -r "$req" > ".build/pip-${dir#.}.log" 2>&1 \
    || { tail -n 30 ".build/pip-${dir#.}.log"; log "pip install failed for $dir"; exit 1; }
  echo "$stamp" > "$dir/.stamp"
}

if py_new=$(find_python 14 13 12); then
  make_venv .venv "$py_new" requirements.txt
else
  py_old=$(find_python 11) || { log "no Python >= 3.11 found"; exit 1; }
  log "no Python >= 3.12: falling back to ansible-core 2.19 on $py_old"
  make_venv .venv "$py_old" requirements-2.19.txt
  # molecule and ansible-lint still support Python 3.11 controllers
  .venv/bin/pip install -q --disable-pip-version-check "molecule==26.10.0" "ansible-lint==26.10.1" >/dev/null 2>&1
fi
if py311=$(find_python 11); then
  make_venv .venv-2.19 "$py311" requirements-2.19.txt
else
  log "no Python 3.11: the ansible-core 2.19 sanity run will be skipped"
fi

# -- ansible-test's get-pip, offline -------------------------------------------------------------
for venv in .venv .venv-2.19; do
  [[ -x $venv/bin/python ]] || continue
  req_py=$(ls "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py 2>/dev/null | head -1)
  [[ -n $req_py ]] || continue
  pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" "$req_py" | head -1)
  [[ -n $pip_version ]] || continue
  mkdir -p "$HOME/.ansible/test/cache"
  cp scripts/get_pip_standin.py "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
done

# -- the collection, where Ansible looks for it ---------------------------------------------------
mkdir -p .build/collections/ansible_collections/multiwan
ln -sfn ../../../.. .build/collections/ansible_collections/multiwan/linux
version=$(.venv/bin/ansible --version)
log "ready: ${version%%$'\n'*}"
