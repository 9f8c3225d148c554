#!/usr/bin/env bash
# Checks a built easytier-probe Debian package.
#
#   bash packaging/check-deb.sh [path/to/easytier-probe_<version>_<arch>.deb]
#
# Without an argument it takes the package of the current version in
# ${CARGO_TARGET_DIR:-target}/debian/, as build-deb.sh makes it.
# It fails (exit 1) when lintian reports an error (E:), when a file is missing
# from the package, when the packaged binary does not print its version, when
# /etc/default/easytier-probe is not a conffile, when the postinst would
# enable or start the service, when systemd-analyze verify finds a problem in
# the unit, or when systemd-analyze security rates its exposure above 2.0.
# Warnings (W:) of lintian are shown but do not fail the check.
set -euo pipefail

cd "$(dirname "$0")/.."

max_exposure=2.0
failures=0
step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }

deb=${1:-}
if [ -z "$deb" ]; then
    # The package that build-deb.sh makes for the current version.
    target_dir=$(cargo metadata --no-deps --format-version 1 \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    pkgid=$(cargo pkgid)
    deb="$target_dir/debian/easytier-probe_${pkgid##*[#@]}_$(dpkg --print-architecture).deb"
fi
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    echo "check-deb: no package found; build it with: bash packaging/build-deb.sh" >&2
    exit 1
fi
echo "checking $deb"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"

step "lintian"
if ! command -v lintian >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "lintian is missing: installing it with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null; }
    else
        echo "check-deb: lintian is missing; install it with: sudo apt-get install lintian" >&2
        exit 1
    fi
fi
# --fail-on none: this script decides; it fails on errors only, warnings are shown.
lintian --fail-on none --display-info "$deb" >"$work/lintian.txt" 2>&1 || true
grep -v 'running with root privileges is not recommended' "$work/lintian.txt" || true
errors=$(grep -c '^E:' "$work/lintian.txt" || true)
warnings=$(grep -c '^W:' "$work/lintian.txt" || true)
if [ "$errors" -gt 0 ]; then
    fail "lintian reports $errors error(s)"
else
    ok "lintian: no errors ($warnings warning(s))"
fi

step "contents"
dpkg-deb -c "$deb" | awk '{print $1, $NF}'
dpkg-deb -x "$deb" "$root"
for path in \
    usr/bin/easytier-probe \
    usr/share/man/man8/easytier-probe.8.gz \
    usr/lib/systemd/system/easytier-probe.service \
    etc/default/easytier-probe \
    etc/easytier-probe/peers.json.example \
    usr/share/doc/easytier-probe/copyright \
    usr/share/doc/easytier-probe/changelog.gz; do
    if [ -f "$root/$path" ]; then
        ok "/$path is in the package"
    else
        fail "/$path is missing from the package"
    fi
done
if [ -x "$root/usr/bin/easytier-probe" ]; then
    ok "/usr/bin/easytier-probe is executable"
else
    fail "/usr/bin/easytier-probe is not executable"
fi

step "binary"
if version_line=$("$root/usr/bin/easytier-probe" --version 2>&1) \
    && printf '%s\n' "$version_line" | grep -Eq '^easytier-probe [0-9]+\.[0-9]+\.[0-9]+'; then
    ok "easytier-probe --version: $version_line"
else
    fail "easytier-probe --version printed no version: $version_line"
fi

step "man page"
if command -v mandoc >/dev/null 2>&1; then
    gzip -dc "$root/usr/share/man/man8/easytier-probe.8.gz" >"$work/easytier-probe.8"
    if lint=$(mandoc -Tlint -W warning "$work/easytier-probe.8" 2>&1) && [ -z "$lint" ]; then
        ok "mandoc -Tlint -W warning: clean"
    else
        printf '%s\n' "$lint"
        fail "mandoc reports warnings in the man page"
    fi
else
    echo "mandoc not installed: man page lint skipped"
fi

step "control files"
dpkg-deb -f "$deb" Package Version Architecture Maintainer Section Priority Depends
conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null || true)
printf 'conffiles:\n%s\n' "$conffiles"
if printf '%s\n' "$conffiles" | grep -qx '/etc/default/easytier-probe'; then
    ok "/etc/default/easytier-probe is a conffile"
else
    fail "/etc/default/easytier-probe is not listed in conffiles"
fi
# The unit must not be enabled or started by installing the package. The
# generated postinst may only re-enable a unit that the admin had enabled
# before an upgrade (guarded by "deb-systemd-helper debian-installed") and
# try-restart a running one.
postinst=$(dpkg-deb -I "$deb" postinst 2>/dev/null || true)
if printf '%s\n' "$postinst" | grep -Eq 'deb-systemd-invoke (start|restart)|systemctl .*(start|enable)'; then
    fail "postinst starts the service before it is configured"
elif printf '%s\n' "$postinst" | grep -q 'deb-systemd-helper enable' \
    && ! printf '%s\n' "$postinst" | grep -q 'deb-systemd-helper debian-installed'; then
    fail "postinst enables the service before it is configured"
else
    ok "postinst neither enables nor starts the service on a new installation"
fi

step "systemd unit"
unit_src="$root/usr/lib/systemd/system/easytier-probe.service"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not installed: unit checks skipped"
elif [ -f "$unit_src" ]; then
    # A copy whose ExecStart= is the extracted binary, so that verify can check
    # it; MANPATH lets verify find the packaged man page of Documentation=.
    unit_dir="$work/unit"
    mkdir -p "$unit_dir"
    sed "s|^ExecStart=/usr/bin/easytier-probe|ExecStart=$root/usr/bin/easytier-probe|" \
        "$unit_src" >"$unit_dir/easytier-probe.service"
    if out=$(MANPATH="$root/usr/share/man" systemd-analyze verify "$unit_dir/easytier-probe.service" 2>&1) \
        && [ -z "$out" ]; then
        ok "systemd-analyze verify: clean"
    else
        printf '%s\n' "$out"
        fail "systemd-analyze verify reports problems"
    fi
    systemd-analyze security --offline=true "$unit_dir/easytier-probe.service" >"$work/security.txt" 2>&1 || true
    grep -E '✗|Overall' "$work/security.txt" || cat "$work/security.txt"
    exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security.txt")
    if [ -z "$exposure" ]; then
        fail "systemd-analyze security printed no exposure level"
    elif awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
        ok "systemd-analyze security: exposure $exposure (at most $max_exposure)"
    else
        fail "systemd-analyze security: exposure $exposure is above $max_exposure"
    fi
fi

step "result"
if [ "$failures" -gt 0 ]; then
    echo "check-deb: $failures check(s) failed for $deb"
    exit 1
fi
echo "check-deb: all checks passed for $deb"
