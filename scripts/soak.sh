#!/usr/bin/env bash
# The reliability tests, run long: SIGKILL crash rounds over NBD (with and
# without the cache dir), the engine's crash property test (kills, power
# cuts of the whole cache dir, lost cache dirs), the interleavings of
# tests/durability.rs (each round with other power-cut seeds), the
# fault-injection tests, and the NBD fuzz targets.
#
#   scripts/soak.sh [ROUNDS]     default 200 crash and durability rounds,
#                                10 model cases and 3 s of fuzzing per round
#   ZEROBLK_SOAK_PROFILE=dev     debug build (what scripts/test.sh runs a
#                                few rounds of); release by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
rounds="${1:-200}"
profile="${ZEROBLK_SOAK_PROFILE:-release}"
export ZEROBLK_CRASH_ROUNDS="$rounds" ZEROBLK_MODEL_CASES="$((rounds * 10))"
export ZEROBLK_FUZZ_SECONDS="$((rounds * 3))"
cargo_profile=(--profile "$profile")
[ "$profile" = dev ] && cargo_profile=()

say "soak: $rounds rounds ($profile build)"
cargo test "${cargo_profile[@]}" --test crash --test engine_model --test faults --test fuzz \
    -- --nocapture

# The durability interleavings: one run per round, each with fresh seeds.
binary=$(cargo test "${cargo_profile[@]}" --test durability --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*durability[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$binary" ] || { echo "cannot find the durability test binary" >&2; exit 1; }
for round in $(seq 1 "$rounds"); do
    ZEROBLK_SEED=$((round * 1000)) "$binary" --quiet >"${TMPDIR:-/tmp}/zeroblk-soak-durability.log" 2>&1 \
        || { cat "${TMPDIR:-/tmp}/zeroblk-soak-durability.log"; echo "durability round $round failed" >&2; exit 1; }
    if [ $((round % 20)) -eq 0 ]; then say "durability: $round of $rounds rounds clean"; fi
done
say "soak: $rounds rounds clean"
