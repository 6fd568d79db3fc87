#!/usr/bin/env bash
# Installs the Debian packages vlmd builds and tests with (run as root). Used by .ci/run; safe to re-run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
    build-essential cmake pkg-config     # toolchain
    libcmocka-dev                        # unit tests
    libmsgpack-dev                       # wire protocol (proto/)
    libuv1-dev libinih-dev               # the daemon: event loop, config file
    libjpeg62-turbo-dev libpng-dev libwebp-dev   # image decoders
    clang libclang-rt-14-dev             # fuzz targets (libFuzzer) and sanitizer runtimes
    libsystemd-dev                       # vlmd: sd_notify, sd_listen_fds (socket activation)
    systemd                              # tests and CI checks only: systemd-socket-activate, systemd-analyze
    lintian                              # CI check of the .deb (cpack)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
