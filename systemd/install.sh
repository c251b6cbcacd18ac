#!/usr/bin/env bash
# Install buildingd as a systemd service from this checkout (Raspberry Pi OS / Debian 12+).
#
#   sudo systemd/install.sh               install or upgrade
#   systemd/install.sh --dry-run          print what would be done, change nothing
#   DESTDIR=/tmp/stage systemd/install.sh stage the files under /tmp/stage, touch nothing else
#
# Creates a venv in /opt/buildingd/venv with buildingd installed into it, installs the unit,
# the sysusers.d and modules-load.d files, and an example /etc/buildingd (settings and the demo
# site) when none exists. Existing files in /etc/buildingd are never overwritten.
#
# Environment: DESTDIR (staging root), PYTHON (interpreter for the venv, default python3),
# BUILDINGD_INSTALL_SKIP_VENV=1 (skip the venv and pip step, e.g. for a test or a venv you
# manage yourself).
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) DRY_RUN=1 ;;
        --help|-h) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PYTHON="${PYTHON:-python3}"
SKIP_VENV="${BUILDINGD_INSTALL_SKIP_VENV:-0}"

PREFIX=/opt/buildingd
VENV="$PREFIX/venv"
CONF_DIR=/etc/buildingd
UNIT_DIR=/etc/systemd/system
SYSUSERS_DIR=/usr/lib/sysusers.d
MODULES_DIR=/etc/modules-load.d

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Run a command, or print it under --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# Touch the live system (users, services, kernel modules) only for a real, unstaged install.
live() { [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ]; }
systemd_running() { [ -d /run/systemd/system ]; }

[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/buildingd.service" ] \
    || die "run me from a buildingd checkout ($SRC has no pyproject.toml / systemd/)"
if [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "installing into the system needs root: sudo $0 (or DESTDIR=... / --dry-run)"
fi

# 1. The program: a venv of its own, so system Python packages are never touched.
if [ "$SKIP_VENV" = 1 ]; then
    say "skipping the venv ($VENV) because BUILDINGD_INSTALL_SKIP_VENV=1"
else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11; buildingd needs Python 3.11 or newer"
    if [ -n "$DESTDIR" ]; then
        warn "a venv is not relocatable: $DESTDIR$VENV only works once copied to $VENV"
    fi
    if [ ! -x "$DESTDIR$VENV/bin/python" ]; then
        run "$PYTHON" -m venv "$DESTDIR$VENV" \
            || die "could not create the venv (on Debian: apt install python3-venv)"
    fi
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade pip
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade "$SRC"
fi

# Reference copies that upgrades refresh (the live configuration in /etc is never replaced).
run install -d -m 0755 "$DESTDIR$PREFIX/share"
run install -m 0644 "$SRC/systemd/buildingd.toml.example" "$DESTDIR$PREFIX/share/buildingd.toml.example"
if [ -f "$SRC/docs/systemd.md" ]; then
    run install -m 0644 "$SRC/docs/systemd.md" "$DESTDIR$PREFIX/share/systemd.md"
fi

# 2. The system user (sysusers.d: applied now and at every boot).
run install -D -m 0644 "$SRC/systemd/buildingd.sysusers" "$DESTDIR$SYSUSERS_DIR/buildingd.conf"
if live; then
    systemd-sysusers "$SYSUSERS_DIR/buildingd.conf"
else
    say "+ systemd-sysusers $SYSUSERS_DIR/buildingd.conf   (not run: staged or dry run)"
fi

# 3. Serial drivers loaded at boot, so adapters plugged later are allowed (see the file).
run install -D -m 0644 "$SRC/systemd/buildingd-modules.conf" "$DESTDIR$MODULES_DIR/buildingd.conf"
if live; then
    # Also now, so that the service started below sees the ttyUSB/ttyACM majors. Best effort:
    # a kernel without these modules simply has no such adapters.
    modprobe -a usbserial cdc_acm 2>/dev/null || warn "could not load usbserial/cdc_acm now"
fi

# 4. The unit.
run install -D -m 0644 "$SRC/systemd/buildingd.service" "$DESTDIR$UNIT_DIR/buildingd.service"

# 5. /etc/buildingd: settings and, for a first install, the demo site. Never overwrite.
run install -d -m 0755 "$DESTDIR$CONF_DIR"
if [ -e "$DESTDIR$CONF_DIR/buildingd.toml" ]; then
    say "keeping $CONF_DIR/buildingd.toml"
else
    # May hold secrets (tokens, passwords): readable by root and the buildingd group only.
    run install -m 0640 "$SRC/systemd/buildingd.toml.example" "$DESTDIR$CONF_DIR/buildingd.toml"
    if live; then
        chgrp buildingd "$CONF_DIR/buildingd.toml"
    fi
fi
if [ -e "$DESTDIR$CONF_DIR/site.yaml" ]; then
    # A site is already there: adding the demo's simulated devices to it would be wrong.
    say "keeping the site in $CONF_DIR (site.yaml exists; demo site not copied)"
else
    say "installing the demo site (simulated devices) in $CONF_DIR"
    run install -m 0644 "$SRC/site.yaml" "$DESTDIR$CONF_DIR/site.yaml"
    for dir in devices policies; do
        [ -d "$SRC/$dir" ] || continue
        while IFS= read -r -d '' file; do
            rel="${file#"$SRC"/}"
            if [ -e "$DESTDIR$CONF_DIR/$rel" ]; then
                say "keeping $CONF_DIR/$rel"
            else
                run install -D -m 0644 "$file" "$DESTDIR$CONF_DIR/$rel"
            fi
        done < <(find "$SRC/$dir" -type f -print0 | sort -z)
    done
fi

# 6. Tell systemd.
if live && systemd_running; then
    systemctl daemon-reload
else
    say "+ systemctl daemon-reload   (not run: staged, dry run or no systemd)"
fi

cat <<EOF

buildingd is installed${DESTDIR:+ under $DESTDIR}.$( [ "$DRY_RUN" = 1 ] && printf ' (dry run: nothing was changed)' )
Next:
  sudo -u buildingd $VENV/bin/buildingd check --config $CONF_DIR/buildingd.toml
                                             # validate settings, devices and policies
  sudo systemctl enable --now buildingd      # start now and at every boot
  systemctl status buildingd                 # state and the one-line summary
  journalctl -u buildingd -f                 # follow the log
  sudo systemctl reload buildingd            # after editing files in $CONF_DIR
Settings: $CONF_DIR/buildingd.toml  (reference: $PREFIX/share/buildingd.toml.example)
Uninstall: sudo $SRC/systemd/uninstall.sh  (keeps $CONF_DIR and /var/lib/buildingd)
EOF
