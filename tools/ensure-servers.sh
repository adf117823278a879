#!/bin/sh
# Install the server binaries the functional tests start themselves
# (redis-server, memcached) when they are missing.  The suite never uses
# an already-running server: it starts its own on free loopback ports.
set -e
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v memcached >/dev/null 2>&1 || missing="$missing memcached"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "need root or sudo to install:$missing" >&2; exit 1; fi
fi
if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y redis memcached openssl
elif command -v brew >/dev/null 2>&1; then
    brew install redis memcached openssl
else
    echo "no known package manager; please install:$missing" >&2; exit 1
fi
