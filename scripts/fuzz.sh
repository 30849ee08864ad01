#!/usr/bin/env bash
# Fuzz every target with cargo-fuzz (libFuzzer) for a bounded time each, and keep any
# crashing input as a regression test (fuzz/regressions/<target>/, run on stable by
# `cargo test`, tests/it/fuzz_regressions.rs).
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# Needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly;
# cargo install cargo-fuzz. Prints, per target, the inputs tried and any crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(entry_decode submission_body checkpoint_note inclusion_proof consistency_proof)
export CARGO_TARGET_DIR=${TALLY_FUZZ_TARGET_DIR:-$HOME/.cache/tally-fuzz-target}
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
  # The committed seeds are read-only input; new corpus entries go to a scratch directory.
  work="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$work"
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  if cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- -max_total_time="$seconds" \
      -artifact_prefix="artifacts/$t/" -rss_limit_mb=2048 > "$log" 2>&1; then
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
    echo "$t: ${runs} inputs in ${seconds}s, no crash"
  else
    status=1
    for a in artifacts/"$t"/*; do
      [ -f "$a" ] && cp "$a" "regressions/$t/" && echo "$t: CRASH, kept as regressions/$t/$(basename "$a")"
    done
    tail -30 "$log"
  fi
done
exit $status
