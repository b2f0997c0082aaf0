#!/usr/bin/env bash
# Installs the Debian packages Tollgate builds and tests with (idempotent; needs root or sudo).
set -euo pipefail
pkgs=(libssl-dev libhiredis-dev libnghttp2-dev redis-server curl python3 strace openssl nghttp2-client python3-h2 python3-yaml python3-jsonschema chromium)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
