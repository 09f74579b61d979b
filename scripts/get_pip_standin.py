"""Offline stand-in for the get-pip bootstrap script that `ansible-test --venv` downloads.

These machines cannot reach the host that serves get-pip. ansible-test only needs pip inside the
venv it creates: install it from the interpreter's bundled wheel (ensurepip), then let that pip
do what get-pip would have done with the same arguments, minus get-pip's own flags.
"""

import ensurepip
import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def main():
    ensurepip.bootstrap(upgrade=True)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_FLAGS]
    if args:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall"] + args)


if __name__ == "__main__":
    main()
