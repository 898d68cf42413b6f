#!/usr/bin/env bash
# Builds a stand-in for python:3.11-slim-bookworm from Debian's packages, for hosts that reach the
# Debian archive and PyPI but no image registry (this project's CI). Debian 12's own Python is 3.11.
#
#   tests/deploy/image/standin_base.sh IMAGE_TAG
#
# Needs root, debootstrap and a running Docker daemon (DOCKER_HOST is honoured). The image carries
# this host's CA bundle and pip index settings, so that pip inside a build reaches what pip here
# reaches; pip may install into the system interpreter (the real image's pip does, too).
set -euo pipefail
tag=${1:?usage: standin_base.sh IMAGE_TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/electra-standin-XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"

bundle=$(python3 -c 'import ssl; print(ssl.get_default_verify_paths().openssl_cafile)')
cp "${SSL_CERT_FILE:-$bundle}" "$root/etc/ssl/certs/ca-certificates.crt"
{
    echo "[global]"
    echo "break-system-packages = true"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    for key in index-url extra-index-url trusted-host; do
        # Only network indexes travel: a file:// index of this host means nothing in the image.
        value=$(pip config get "global.$key" 2>/dev/null | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)
        if [ -n "${value// /}" ]; then echo "$key = $value"; fi
    done
} >"$root/etc/pip.conf"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "$tag"
