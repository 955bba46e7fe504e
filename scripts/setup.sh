#!/usr/bin/env bash
# setup.sh - install the Debian bookworm packages walrelay needs to build and test.
#
# Idempotent and non-interactive: asks dpkg which packages are missing and runs apt-get
# only for those, so a second run does nothing. Uses sudo when not root.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(
    build-essential meson ninja-build pkg-config
    libpq-dev libuv1-dev libmsgpack-dev libsqlite3-dev libinih-dev
    postgresql-15 postgresql-client-15
    python3 python3-pytest python3-pytest-xdist python3-psycopg sqlite3
    clang libclang-rt-14-dev # fuzzing and sanitizers
    libjansson-dev           # JSON parsing (events CLI, configuration values)
    libcurl4-openssl-dev     # the http (webhook) destination
    libssl-dev               # its HMAC-SHA256 signatures (libcrypto)
    libnats-dev nats-server  # the nats (JetStream) destination and its tests
    libmicrohttpd-dev        # /metrics, /healthz, /readyz
    libsystemd-dev           # sd_notify
    prometheus python3-prometheus-client yamllint python3-yaml systemd # operations tests
    iproute2                 # tc: the chaos suite's network cut (tests/chaos)
)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: all ${#packages[@]} packages are installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "setup: missing packages: ${missing[*]}" >&2
        echo "setup: not root and sudo is not available: install them as root" >&2
        exit 1
    fi
    sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
fi

echo "setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
