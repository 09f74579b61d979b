"""Offline stand-in for the get-pip bootstrap script that `ansible-test --venv` downloads.

These machines cannot reach the host that serves get-pip. ansible-test only needs pip inside the
venv it creates: install it from the interpreter's bundled wheel (ensurepip), then let that pip
do what get-pip would have done with the same arguments, minus get-pip's own flags.

The bundled pip of older interpreters (before pip 24.2) trusts only its own certifi bundle, not
the system's certificate store, so it is pointed at the system's CA bundle explicitly: that is
what newer pip does by itself (truststore), and what lets it through a TLS-inspecting proxy.
"""

import ensurepip
import os
import ssl
import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def system_ca_bundle():
    """The system's CA bundle file, or None."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), paths.cafile,
                      paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def main():
    ensurepip.bootstrap(upgrade=True)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_FLAGS]
    if not args:
        return
    bundle = system_ca_bundle()
    if bundle and "--cert" not in args:
        args = ["--cert", bundle] + args
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall"] + args)


if __name__ == "__main__":
    main()
