#!/usr/bin/env bash
# Remove what systemd/install.sh installed.
#
#   sudo systemd/uninstall.sh               stop and remove the service and /opt/buildingd
#   sudo systemd/uninstall.sh --purge       also remove /etc/buildingd, /var/lib/buildingd and
#                                           the buildingd user
#   systemd/uninstall.sh --dry-run          print what would be done, change nothing
#   DESTDIR=/tmp/stage systemd/uninstall.sh remove a staged install under /tmp/stage
#
# Without --purge, the settings, site files and the telemetry buffer are kept (and so is the
# user that owns them), so a later install picks up where this one stopped.
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        --help|-h) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PREFIX=/opt/buildingd
CONF_DIR=/etc/buildingd
STATE_DIR=/var/lib/buildingd
UNIT=/etc/systemd/system/buildingd.service
SYSUSERS=/usr/lib/sysusers.d/buildingd.conf
MODULES=/etc/modules-load.d/buildingd.conf

say() { printf '%s\n' "$*"; }
die() { printf 'uninstall.sh: %s\n' "$*" >&2; exit 1; }
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}
live() { [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ]; }
systemd_running() { [ -d /run/systemd/system ]; }

if [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "removing from the system needs root: sudo $0 (or DESTDIR=... / --dry-run)"
fi

# 1. Stop the service: it puts actuators into their shutdown state and flushes telemetry.
if live && systemd_running; then
    systemctl disable --now buildingd.service 2>/dev/null || true
elif [ -z "$DESTDIR" ]; then
    say "+ systemctl disable --now buildingd.service   (not run: dry run or no systemd)"
fi

# 2. The installed files.
for file in "$UNIT" "$MODULES" "$SYSUSERS"; do
    if [ -e "$DESTDIR$file" ]; then
        run rm -f "$DESTDIR$file"
    fi
done
if [ -d "$DESTDIR$PREFIX" ]; then
    run rm -rf "$DESTDIR$PREFIX"
fi
if live && systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed buildingd.service 2>/dev/null || true
fi

# 3. Data and identity, only when asked.
if [ "$DRY_RUN" = 1 ]; then
    say "(dry run: nothing was changed)"
fi
if [ "$PURGE" = 1 ]; then
    for dir in "$CONF_DIR" "$STATE_DIR"; do
        if [ -e "$DESTDIR$dir" ]; then
            run rm -rf "$DESTDIR$dir"
        fi
    done
    if live && getent passwd buildingd >/dev/null; then
        userdel buildingd
        if getent group buildingd >/dev/null; then
            groupdel buildingd
        fi
    elif [ -z "$DESTDIR" ]; then
        say "+ userdel buildingd; groupdel buildingd   (not run: dry run or no such user)"
    fi
    say "buildingd removed, including $CONF_DIR, $STATE_DIR and the buildingd user."
else
    say "buildingd removed${DESTDIR:+ from $DESTDIR}. Kept: $CONF_DIR (settings, site), $STATE_DIR (state, telemetry buffer)."
    say "Remove them too with: sudo $0 --purge"
fi
