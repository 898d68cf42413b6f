#!/usr/bin/env bash
# The Debian packages some tests start for real: nginx (two replicas behind it, the failover test),
# Docker's engine and debootstrap (the image test builds the Dockerfile and serves from it).
# Installs what is missing and never stops the test command: a test whose tool could not be
# installed says so itself (the failover test skips; the image test fails).
set -uo pipefail
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
{ command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ]; } || missing+=(docker.io)
{ command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ]; } || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-host-tools: cannot install ${missing[*]} here (needs root and apt-get)" >&2
    exit 0
fi
if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "install-host-tools: installed ${missing[*]}"
else
    echo "install-host-tools: installing ${missing[*]} failed" >&2
fi
exit 0
