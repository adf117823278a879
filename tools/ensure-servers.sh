#!/bin/sh
# Install the server binaries the functional tests start themselves
# (redis-server, memcached, etcd and etcdctl) when they are missing.  The
# suite never uses an already-running server: it starts its own on free
# loopback ports.
set -e
missing=""      # commands not found
apt_pkgs=""     # and the packages that bring them, per package manager
dnf_pkgs=""
brew_pkgs=""
# need COMMAND APT-PACKAGES DNF-PACKAGES BREW-PACKAGES
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    missing="$missing $1"
    for pkg in $2; do case " $apt_pkgs " in *" $pkg "*) ;; *) apt_pkgs="$apt_pkgs $pkg";; esac; done
    for pkg in $3; do case " $dnf_pkgs " in *" $pkg "*) ;; *) dnf_pkgs="$dnf_pkgs $pkg";; esac; done
    for pkg in $4; do case " $brew_pkgs " in *" $pkg "*) ;; *) brew_pkgs="$brew_pkgs $pkg";; esac; done
}
need redis-server redis-server redis redis
need memcached memcached memcached memcached
need openssl openssl openssl openssl
need etcd etcd-server etcd etcd
need etcdctl etcd-client etcd etcd
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "need root or sudo to install:$missing" >&2; exit 1; fi
fi
if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $apt_pkgs
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y $dnf_pkgs
elif command -v brew >/dev/null 2>&1; then
    brew install $brew_pkgs
else
    echo "no known package manager; please install:$missing" >&2; exit 1
fi
