#!/usr/bin/env bash
# Runs the whole test suite against the test services and ends with one
# summary line, "N passed, N failed", over every test binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source .dbswarm/test/env
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# The crash tests start `dbswarm serve` processes of their own.
cargo build -p server --bin dbswarm
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
