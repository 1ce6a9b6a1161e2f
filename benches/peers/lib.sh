# Shared helpers of the peer benchmark: start and stop reserva, Redis and
# PostgreSQL on 127.0.0.1 in a temporary directory, and measure their CPU.
# Sourced by run.sh; every server started here is stopped by stop_all.

PIDS=()          # pids to stop, in start order
PG_DATA=""       # PostgreSQL data directory, if one was started

die() { echo "peers: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # PORT SECONDS
    local port=$1 tries=$(( $2 * 10 ))
    for _ in $(seq "$tries"); do
        if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# CPU ticks (USER_HZ, 100/s) of a process and all of its descendants,
# including children already reaped (cutime, cstime): PostgreSQL's backends
# exit when the load generator disconnects.
tree_ticks() { # PID
    local pids
    pids=$(ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            keep[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            for (p in keep) print p
        }')
    local total=0 t
    for p in $pids; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$(( total + t ))
    done
    echo "$total"
}

start_reserva() { # DIR FSYNC -> sets URL, SERVER_PID
    local dir=$1 fsync=$2 port
    port=$(free_port)
    mkdir -p "$dir"
    "$BIN/reserva-server" --data "$dir" --listen "127.0.0.1:$port" --cores "${RESERVA_CORES:-2}" \
        --fsync "$fsync" --log warn >"$dir.out" 2>"$dir.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 600); do
        grep -q "reserva-server ready" "$dir.out" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir.err" >&2; die "reserva-server exited"; }
        sleep 0.1
    done
    grep -q "reserva-server ready" "$dir.out" || die "reserva-server not ready in 60 s"
    URL="reserva://127.0.0.1:$port"
}

start_redis() { # DIR APPENDFSYNC -> sets URL, SERVER_PID
    local dir=$1 mode=$2 port
    port=$(free_port)
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" \
        --appendonly yes --appendfsync "$mode" --protected-mode yes \
        --logfile "$dir/redis.log" --daemonize no &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$port" 30 || die "redis-server did not listen on $port"
    URL="redis://127.0.0.1:$port/"
}

start_postgres() { # DIR SYNCHRONOUS_COMMIT -> sets URL, SERVER_PID
    local dir=$1 sync=$2 port bin
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    port=$(free_port)
    mkdir -p "$dir"
    chmod 755 "$(dirname "$dir")"
    chown postgres: "$dir"
    runuser -u postgres -- "$bin/initdb" -D "$dir/data" --auth=trust -U postgres >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    PG_DATA="$dir/data"
    runuser -u postgres -- "$bin/postgres" -D "$dir/data" -c listen_addresses=127.0.0.1 -p "$port" \
        -c unix_socket_directories="$dir" -c fsync=on -c synchronous_commit="$sync" \
        -c max_connections=300 -c shared_buffers=1GB -c wal_buffers=64MB \
        -c max_wal_size=4GB -c checkpoint_timeout=30min >"$dir/postgres.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$port" 60 || { cat "$dir/postgres.log" >&2; die "postgres did not listen on $port"; }
    sleep 0.5
    URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_server() { # PID
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_server "$pid"
    done
    PIDS=()
}
