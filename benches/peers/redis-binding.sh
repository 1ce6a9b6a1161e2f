#!/usr/bin/env bash
# reserva-loadgen's Redis binding against a lean reference client
# (lean_redis.rs: the same two Lua scripts, EVALSHA, one blocking thread per
# connection), on one Redis 7 with `appendfsync always`, same catalogue,
# same closed loop (W workers x 1 unit in flight: reserve, await, confirm,
# await). Runs the clients in turn, ROUNDS times, and prints per client the
# median reserve+confirm/s, its median ratio to the first client's in the
# same round (the machine's load drifts less within a round), the median
# EVALSHA calls per fdatasync of Redis (commands per durability barrier)
# and Redis's CPU per EVALSHA: `appendfsync always` throughput is
# barriers/s x commands per barrier, and Redis is bound by its one core
# once barriers are fast.
#
#   CARGO_TARGET_DIR=/work/target-loadgen cargo build --release -p reserva-loadgen
#   BIN=/work/target-loadgen/release benches/peers/redis-binding.sh
#
# Knobs [defaults]: BIN [target/release], DURATION [15], ROUNDS [3],
# WORKERS [64], SKUS [100000], WAREHOUSES [4], APPENDFSYNC [always],
# CLIENTS ["loadgen lean"]; a client is `lean` (W connections) or `loadgen`
# ($BIN/reserva-loadgen) or `base` (the binary $BASE, e.g. an older build to
# compare with), either with options after commas: `c=N` (--connections N),
# `t=N` (--threads N), e.g. `loadgen,c=16,t=4`.
# Needs redis-server (apt-get install redis-server); uses perf for the
# fdatasync count when it is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BIN=${BIN:-$ROOT/target/release}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-64}
SKUS=${SKUS:-100000}
WAREHOUSES=${WAREHOUSES:-4}
APPENDFSYNC=${APPENDFSYNC:-always}
CLIENTS=${CLIENTS:-"loadgen lean"}
WORK=$(mktemp -d /tmp/reserva-redis-binding.XXXXXX)

# shellcheck source=lib.sh
source "$ROOT/benches/peers/lib.sh"
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

[[ -x "$BIN/reserva-loadgen" ]] || die "build first: cargo build --release -p reserva-loadgen (BIN=$BIN)"
command -v redis-server >/dev/null || die "install redis-server first (apt-get install -y redis-server)"
rustc -O --edition 2024 "$ROOT/benches/peers/lean_redis.rs" -o "$WORK/lean-redis"

start_redis "$WORK/redis" "$APPENDFSYNC"
PORT=${URL##*:}; PORT=${PORT%/}
"$BIN/reserva-loadgen" seed --target "$URL" --skus "$SKUS" --warehouses "$WAREHOUSES" >"$WORK/seed.txt" 2>&1 ||
    { cat "$WORK/seed.txt" >&2; die "seeding failed"; }
echo "redis-binding: redis at $URL (appendfsync $APPENDFSYNC), $WORKERS workers, ${DURATION} s per run" >&2

evalsha_calls() {
    redis-cli -p "$PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_evalsha:/ { print $3 }'
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for client in $CLIENTS; do
        c0=$(evalsha_calls); c0=${c0:-0}
        perf_out=$WORK/perf.$client.$round
        perf_pid=""
        if command -v perf >/dev/null; then
            perf stat -e syscalls:sys_enter_fdatasync,task-clock -x, -o "$perf_out" -p "$SERVER_PID" &
            perf_pid=$!
        fi
        case $client in
            lean)
                line=$("$WORK/lean-redis" --port "$PORT" --workers "$WORKERS" --duration "$DURATION" \
                    --skus "$SKUS" --warehouses "$WAREHOUSES")
                rate=$(sed -E 's/.*s: ([0-9]+) reserve\+confirm.*/\1/' <<<"$line") ;;
            loadgen* | base*)
                lg=$BIN/reserva-loadgen
                [[ $client == base* ]] && lg=${BASE:?set BASE to a reserva-loadgen binary}
                args=(run --target "$URL" --scenario reserve --concurrency "$WORKERS"
                    --duration "${DURATION}s" --skus "$SKUS" --warehouses "$WAREHOUSES" --quiet
                    --json "$WORK/run.json")
                IFS=, read -ra opts <<<"$client"
                for o in "${opts[@]:1}"; do
                    case $o in
                        c=*) args+=(--connections "${o#c=}") ;;
                        t=*) args+=(--threads "${o#t=}") ;;
                        *) die "unknown option $o of $client" ;;
                    esac
                done
                "$lg" "${args[@]}" >"$WORK/run.txt" 2>&1 ||
                    { cat "$WORK/run.txt" >&2; die "reserva-loadgen failed"; }
                rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["goodput_per_s"]), sum(r["errors"].values()))' "$WORK/run.json")
                [[ ${rate#* } == 0 ]] || echo "redis-binding: $client had errors: $rate" >&2
                rate=${rate% *} ;;
            *) die "unknown client $client" ;;
        esac
        per_sync=""
        if [[ -n $perf_pid ]]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            syncs=$(awk -F, '/fdatasync/ { print $1 }' "$perf_out")
            cpu_ms=$(awk -F, '/task-clock/ { print $1 }' "$perf_out")
            c1=$(evalsha_calls)
            per_sync=$(python3 -c 'import sys; c0, c1, s, ms = map(float, sys.argv[1:]); n = max(c1 - c0, 1); print(f"{n / max(s, 1):.1f}\t{ms * 1e3 / n:.1f}")' \
                "$c0" "${c1:-0}" "${syncs:-0}" "${cpu_ms:-0}")
        fi
        printf '%s\t%s\t%s\n' "$client" "$rate" "${per_sync:-$'\t'}" >>"$RESULTS"
        echo "redis-binding: round $round $client: $rate reserve+confirm/s, EVALSHA per fdatasync and Redis CPU µs per EVALSHA: ${per_sync:-?}" >&2
    done
done

python3 - "$RESULTS" "$CLIENTS" "$WORKERS" "$DURATION" "$ROUNDS" <<'EOF'
import statistics, sys
path, clients, workers, dur, rounds = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
print(f"\n{workers} workers x 1 unit in flight, {dur} s per run, {rounds} rounds (clients in turn)\n")
print("| client | reserve+confirm/s (median) | runs | vs first client, same round (median) | EVALSHA per fdatasync | Redis CPU µs per EVALSHA |")
print("|---|---|---|---|---|---|")
names = clients.split()
first = [int(r[1]) for r in rows if r[0] == names[0]]
def med(xs, fmt):
    return fmt.format(statistics.median(xs)) if xs else "n/a"
for c in names:
    rs = [int(r[1]) for r in rows if r[0] == c]
    ratio = [a / b for a, b in zip(rs, first) if b]
    ps = [float(r[2]) for r in rows if r[0] == c and r[2]]
    us = [float(r[3]) for r in rows if r[0] == c and len(r) > 3 and r[3]]
    print(f"| {c} | {statistics.median(rs):,.0f} | {', '.join(f'{x:,}' for x in rs)} | "
          f"{med(ratio, '{:.2f}')} | {med(ps, '{:.1f}')} | {med(us, '{:.1f}')} |")
EOF
