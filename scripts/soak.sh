#!/usr/bin/env bash
# The reliability tests, run long: SIGKILL crash rounds over NBD (with and
# without the cache dir), the engine's crash property test, the
# fault-injection tests, and the NBD fuzz targets.
#
#   scripts/soak.sh [ROUNDS]     default 200 crash rounds, 2000 model cases,
#                                3 s of fuzzing per round and target
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-200}"
export ZEROBLK_CRASH_ROUNDS="$rounds" ZEROBLK_MODEL_CASES="$((rounds * 10))"
export ZEROBLK_FUZZ_SECONDS="$((rounds * 3))"
cargo test --release --test crash --test engine_model --test faults --test fuzz -- --nocapture
