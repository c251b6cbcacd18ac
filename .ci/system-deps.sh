#!/bin/sh
# Debian packages the tests need: real servers (mosquitto, victoria-metrics), serial lines
# (socat), a private D-Bus for the BlueZ stand-in, headers to build dbus-python, systemd-analyze,
# libmodbus and a C compiler for the Modbus test device that is not pymodbus (built by the tests).
# Installs only what is missing; needs root (or sudo) only when something is missing.
set -eu
PACKAGES="mosquitto socat victoria-metrics dbus libdbus-1-dev libglib2.0-dev pkg-config systemd
libmodbus-dev gcc libc6-dev"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
# The Debian packages enable their services; tests start their own on free ports.
for svc in mosquitto victoria-metrics; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
