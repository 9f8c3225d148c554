#!/bin/sh
# Runs a test command (cargo test ...), shows its output as it comes, and ends
# with one line for the whole run, summed over cargo's per-binary
# "test result:" lines:
#
#   sh scripts/test-summary.sh cargo test --locked --offline --no-fail-fast
#   ...
#   412 passed, 0 failed
#
# Exits with the command's own status. A test binary that dies without a
# "test result:" line (a crash, a signal) counts in no number, so a note
# above the line says so whenever the command failed and no test did.
set -u

log=$(mktemp)
rc_file=$(mktemp)
trap 'rm -f "$log" "$rc_file"' EXIT
echo 0 >"$rc_file"

{ "$@" 2>&1 || echo $? >"$rc_file"; } | tee "$log"
rc=$(cat "$rc_file")

awk -v rc="$rc" '
    /^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) passed += $(i - 1)
            if ($(i) ~ /^failed;?$/) failed += $(i - 1)
        }
    }
    END {
        if (rc != 0 && failed == 0)
            printf "(the test command failed with exit status %d, though no test reported a failure: see above)\n", rc
        printf "%d passed, %d failed\n", passed, failed
    }' "$log"
exit "$rc"
