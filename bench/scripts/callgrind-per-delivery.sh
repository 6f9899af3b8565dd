#!/usr/bin/env bash
# User-space instructions per delivery of a gateway binary, counted by callgrind: one replica,
# 1,000 subscribers of one channel, 5,000 deliveries/s for a short and a long step; the
# difference of the two runs' totals over the difference of their deliveries leaves out
# start-up and connects. Repeatable where CPU times are not.
#
#   bench/scripts/callgrind-per-delivery.sh [GATEWAY_BINARY]   # default target/release/gateway
#
# Needs valgrind (apt-get install valgrind) and a release build of the bench
# (cargo build --release -p bench -p gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."
gateway=$(realpath "${1:-target/release/gateway}")
bench=target/release/bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A total
for step in 4 16; do
  # The bench SIGKILLs what it starts; the wrapper's child survives that and is stopped with
  # SIGTERM below, so that callgrind writes its totals.
  cat > "$work/gateway.sh" <<EOS
#!/usr/bin/env bash
valgrind --tool=callgrind --callgrind-out-file=$work/$step.out "$gateway" "\$@" &
echo \$! > $work/pid
wait
EOS
  chmod +x "$work/gateway.sh"
  "$bench" --no-build --gateway-bin "$work/gateway.sh" hot-channel --replicas 1 \
    --per-replica 1000 --rates 5000 --step "${step}s" > "$work/$step.txt" 2> "$work/$step.err"
  pid=$(cat "$work/pid")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.3; done
  total[$step]=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/$step.out")
done
python3 - "${total[4]}" "${total[16]}" <<'PY'
import sys
short, long = int(sys.argv[1]), int(sys.argv[2])
deliveries = 12 * 5000
print(f"instructions: {short:,} (4 s) and {long:,} (16 s)")
print(f"per delivery: {(long - short) / deliveries:,.0f} (over the {deliveries:,} deliveries of the 12 s between them)")
PY
