#!/usr/bin/env bash
# The peer benchmark: reserva, Redis and PostgreSQL side by side, on this
# machine, with the same catalogue, scenarios, rates and load generator.
#
#   cargo build --release -p reserva-server -p reserva-loadgen
#   benches/peers/run.sh            # prints a markdown table; results in $OUT
#
# Installs redis-server and postgresql from Debian packages when missing
# (needs root), starts every server on 127.0.0.1 in a temporary directory,
# seeds each identically, runs each scenario twice per target, and stops
# everything it started (also on Ctrl-C or an error).
#
# Durability rows: reserva --fsync always / Redis appendfsync always /
# PostgreSQL synchronous_commit=on (every acknowledged write on disk), and
# the relaxed rows reserva --fsync interval:10 / Redis everysec /
# PostgreSQL synchronous_commit=off.
#
# Per scenario and target:
#   open:   open loop at $RATE units/s for $DURATION s (latency from the schedule)
#   closed: closed loop, $CONCURRENCY workers x $BATCH units in flight each
#           (throughput with the same pipelining depth for every target)
#
# Environment knobs (defaults in brackets): DURATION [30], RATE [2000],
# CONCURRENCY [64], BATCH [16], SCENARIOS ["reserve checkout hotsku browse"],
# SKUS [100000], WAREHOUSES [4], TARGETS ["reserva-always reserva-interval
# redis-always redis-everysec postgres-on postgres-off"], OUT [a new temp dir],
# TABLE_ONLY [unset; set it to print the table of an earlier OUT without running].
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BIN=${BIN:-$ROOT/target/release}
DURATION=${DURATION:-30}
RATE=${RATE:-2000}
CONCURRENCY=${CONCURRENCY:-64}
BATCH=${BATCH:-16}
SCENARIOS=${SCENARIOS:-"reserve checkout hotsku browse"}
SKUS=${SKUS:-100000}
WAREHOUSES=${WAREHOUSES:-4}
TARGETS=${TARGETS:-"reserva-always reserva-interval redis-always redis-everysec postgres-on postgres-off"}
WORK=$(mktemp -d /tmp/reserva-peers.XXXXXX)
chmod 755 "$WORK" # PostgreSQL runs as its own user and must reach its directory
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"

# shellcheck source=lib.sh
source "$ROOT/benches/peers/lib.sh"

cleanup() {
    if [[ -n "$PG_DATA" ]]; then
        runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl" \
            -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        PG_DATA=""
    fi
    stop_all
    rm -rf "$WORK/data"
}
trap cleanup EXIT INT TERM

[[ -x "$BIN/reserva-server" && -x "$BIN/reserva-loadgen" ]] ||
    die "build first: cargo build --release -p reserva-server -p reserva-loadgen"

if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "peers: installing redis-server and postgresql (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null
fi
# Debian's packages may start their own services on the default ports; ours
# use free ports in $WORK and leave those alone.

machine() {
    echo "$(nproc) vCPU $(uname -m), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)," \
        "$(redis-server --version | awk '{print $1, $2, $3}'), PostgreSQL" \
        "$(ls /usr/lib/postgresql | sort -V | tail -1), $(date -u +%Y-%m-%d)"
}

start_target() { # NAME
    local dir=$WORK/data/$1
    case $1 in
        reserva-always) start_reserva "$dir" always ;;
        reserva-interval) start_reserva "$dir" interval:10 ;;
        redis-always) start_redis "$dir" always ;;
        redis-everysec) start_redis "$dir" everysec ;;
        postgres-on) start_postgres "$dir" on ;;
        postgres-off) start_postgres "$dir" off ;;
        *) die "unknown target $1" ;;
    esac
}

stop_target() {
    if [[ -n "$PG_DATA" ]]; then
        runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl" \
            -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        PG_DATA=""
    fi
    stop_all
    rm -rf "$WORK/data"
}

run_one() { # TARGET SCENARIO MODE
    local name=$1 scenario=$2 mode=$3 json t0 t1 c0 c1 args
    json="$OUT/$name.$scenario.$mode.json"
    args=(run --target "$URL" --scenario "$scenario" --duration "${DURATION}s"
        --skus "$SKUS" --warehouses "$WAREHOUSES" --json "$json" --quiet)
    if [[ $mode == open ]]; then
        args+=(--rate "$RATE")
    else
        args+=(--concurrency "$CONCURRENCY" --batch "$BATCH")
    fi
    [[ $name == reserva-* ]] || args+=(--connections "$CONCURRENCY")
    c0=$(tree_ticks "$SERVER_PID"); t0=$(date +%s.%N)
    "$BIN/reserva-loadgen" "${args[@]}" >"$OUT/$name.$scenario.$mode.txt" 2>&1 ||
        echo "peers: $name $scenario $mode exited non-zero (see $OUT/$name.$scenario.$mode.txt)" >&2
    c1=$(tree_ticks "$SERVER_PID"); t1=$(date +%s.%N)
    python3 - "$json" "$c0" "$c1" "$t0" "$t1" <<'EOF'
import json, sys
path, c0, c1, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
try:
    r = json.load(open(path))
except Exception:
    sys.exit(0)
r["server_cpu_pct"] = 100.0 * (c1 - c0) / 100.0 / max(t1 - t0, 1e-9)
json.dump(r, open(path, "w"), indent=1)
EOF
    echo "peers: $name $scenario $mode done" >&2
}

echo "peers: results in $OUT" >&2
for name in $TARGETS; do
    [[ -z "${TABLE_ONLY:-}" ]] || break
    start_target "$name"
    echo "peers: $name at $URL" >&2
    "$BIN/reserva-loadgen" seed --target "$URL" --skus "$SKUS" --warehouses "$WAREHOUSES" \
        >"$OUT/$name.seed.txt" 2>&1 || { cat "$OUT/$name.seed.txt" >&2; die "seeding $name failed"; }
    for scenario in $SCENARIOS; do
        for mode in open closed; do
            run_one "$name" "$scenario" "$mode"
        done
    done
    stop_target
done

MACHINE=$(machine)
python3 - "$OUT" "$MACHINE" "$RATE" "$CONCURRENCY" "$BATCH" "$DURATION" "$SCENARIOS" "$TARGETS" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out, machine, rate, conc, batch, dur, scenarios, targets = sys.argv[1:]
def us(v):
    return f"{v/1000:.1f} ms" if v >= 1000 else f"{v} µs"
print(f"Machine: {machine}. Each row: {dur} s; open = {rate} units/s on a schedule, "
      f"closed = {conc} workers x {batch} units in flight. Server CPU in % of one core.\n")
print("| scenario | mode | target | durability | ok/s | p50 | p99 | p99.9 | errors | shed | server CPU | loadgen CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
dur_name = {"reserva-always": "fsync always", "reserva-interval": "fsync interval:10",
            "redis-always": "appendfsync always", "redis-everysec": "appendfsync everysec",
            "postgres-on": "synchronous_commit on", "postgres-off": "synchronous_commit off"}
for s in scenarios.split():
    for mode in ("open", "closed"):
        for t in targets.split():
            p = os.path.join(out, f"{t}.{s}.{mode}.json")
            if not os.path.exists(p):
                print(f"| {s} | {mode} | {t.split('-')[0]} | {dur_name.get(t, t)} | (failed) | | | | | | | |")
                continue
            r = json.load(open(p))
            l = r["latency_us"]
            errs = sum(r["errors"].values())
            codes = ", ".join(f"{k}={v}" for k, v in sorted(r["errors"].items()))
            print(f"| {s} | {mode} | {t.split('-')[0]} | {dur_name.get(t, t)} | {r['goodput_per_s']:,.0f} | "
                  f"{us(l['p50'])} | {us(l['p99'])} | {us(l['p999'])} | {errs}{' (' + codes + ')' if codes else ''} | "
                  f"{r['shed']} | {r.get('server_cpu_pct', 0):.0f}% | {r['loadgen_cpu_pct']:.0f}% |")
EOF
