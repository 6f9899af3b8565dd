#!/usr/bin/env bash
# A short run of every fuzz target (docs/fuzzing.md): builds `fuzz/` once with nightly and
# cargo-fuzz (installing cargo-fuzz if missing), then runs each target for FUZZ_SECONDS
# (default 10) from the committed corpus. New inputs go to a temporary folder, never into the
# repository; a crash or a failed property exits non-zero and leaves the input under
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-8}"
targets=(client_frame channel_name channel_pattern bus_envelope cursor since msgpack_frame)
# The fuzz build (nightly, sanitizers, release) takes minutes from nothing: it is kept outside
# the clone, so a machine builds it once and later runs rebuild only what changed.
target_dir="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway/fuzz-target}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

cargo +nightly fuzz build --target-dir "$target_dir"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  # The first corpus folder receives what the fuzzer finds; the committed one is only read.
  if ! cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  echo "fuzz $target: ${runs:-?} runs in ${seconds}s (${rate:-?}/s), no crash"
done
