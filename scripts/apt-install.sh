#!/usr/bin/env sh
# Install Debian packages where we can (as root, or with sudo that needs no password); the
# package lists are refreshed only when the first try fails. Exit 0 when installed, 1 otherwise.
command -v apt-get >/dev/null 2>&1 || exit 1
SUDO=""
[ "$(id -u)" = "0" ] || SUDO="sudo -n"
APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"
$APT install -y -qq "$@" >/dev/null 2>&1 && exit 0
$APT update -qq >/dev/null 2>&1 && $APT install -y -qq "$@" >/dev/null 2>&1
