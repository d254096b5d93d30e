#!/usr/bin/env bash
# Runs the same durable workloads against Sluice, RabbitMQ and NATS JetStream with
# sluice-bench, and writes the results into BENCHMARKS.md (tables and charts).
#
#   benches/run-peers.sh                       # everything (needs root for apt-get)
#   BROKERS="sluice nats" WORKLOADS="1p1c-128 latency-10k" benches/run-peers.sh
#   BACKLOG_COUNT=2000000 DURATION=10 benches/run-peers.sh
#
# Installs rabbitmq-server and nats-server from Debian's packages if they are missing (without
# letting the packages start their services), builds the release binaries, measures the disk's
# fdatasync'd write rate with storage-bench, then, for each workload and each broker, starts
# a fresh broker on 127.0.0.1 with a temporary data directory, runs sluice-bench, and stops
# the broker by its pid. Every process it starts is stopped on exit, also on error or Ctrl-C.
#
# Settings (environment):
#   BROKERS        brokers to run, in order            [sluice amqp nats]
#   WORKLOADS      workloads to run (names below)      [all]
#   DURATION       seconds per throughput workload     [20]
#   LATENCY_SECS   seconds of the fixed-rate workload  [30] (the first 5 are warm-up)
#   BACKLOG_COUNT  messages of the backlog workload    [10000000]
#   BACKLOG_COUNT_AMQP  the same for RabbitMQ only     [BACKLOG_COUNT]
#   RESULTS        where JSON and logs go              [target/bench-results/peers]
#   WORK           where the brokers' data dirs go     [target/bench-work] (a real disk)
#   REPORT         1 = rewrite BENCHMARKS.md's section and charts afterwards  [1]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
BROKERS=${BROKERS:-"sluice amqp nats"}
ALL_WORKLOADS="1p1c-128 1p4c-128 1p1c-4k fanout4-topic latency-10k backlog"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
DURATION=${DURATION:-20}
LATENCY_SECS=${LATENCY_SECS:-30}
BACKLOG_COUNT=${BACKLOG_COUNT:-10000000}
BACKLOG_COUNT_AMQP=${BACKLOG_COUNT_AMQP:-$BACKLOG_COUNT}
RESULTS=${RESULTS:-$ROOT/target/bench-results/peers}
WORK=${WORK:-$ROOT/target/bench-work}
REPORT=${REPORT:-1}

SLUICE_PORT=5680
AMQP_PORT=5672
NATS_PORT=4222

log() { printf '== %s\n' "$*" >&2; }

# ---- processes we started, stopped by pid on exit -------------------------------------
STARTED=()      # pids to SIGTERM, last started first
cleanup() {
    local pid
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pid=${STARTED[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${STARTED[@]}"; do
        wait_gone "$pid" 60 || kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $2 seconds for process $1 to end.
wait_gone() {
    local pid=$1 limit=$2 t=0
    while kill -0 "$pid" 2>/dev/null; do
        # Reap it if it is our child (a zombie still answers kill -0).
        if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ]; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
        t=$((t + 1))
        [ "$t" -ge $((limit * 5)) ] && return 1
    done
    wait "$pid" 2>/dev/null || true
    return 0
}

forget() {
    local keep=() pid
    for pid in "${STARTED[@]}"; do
        [ "$pid" = "$1" ] || keep+=("$pid")
    done
    STARTED=("${keep[@]}")
}

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 120; then
        log "pid $pid did not stop after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || true
    fi
    forget "$pid"
}

wait_port() {
    local port=$1 limit=$2 t=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        sleep 0.25
        t=$((t + 1))
        if [ "$t" -ge $((limit * 4)) ]; then
            log "nothing listens on 127.0.0.1:$port after ${limit}s"
            return 1
        fi
    done
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---- installing the peers ------------------------------------------------------------------
install_peers() {
    local missing=()
    case " $BROKERS " in *" amqp "*) command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server) ;; esac
    case " $BROKERS " in *" nats "*) command -v nats-server >/dev/null || missing+=(nats-server) ;; esac
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} from Debian's packages"
    # Keep the packages' maintainer scripts from starting system-wide services (which would
    # listen on every interface): policy-rc.d exit 101 = "not allowed".
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    [ -n "$made_policy" ] && rm -f "$policy"
    return 0
}

# ---- starting and stopping brokers ------------------------------------------------------
# Each start_* sets BROKER_PID (the process to sample and stop), BROKER_DATA (its data
# directory) and BROKER_STOP (pids to stop, in order).
start_sluice() {
    local dir=$1
    port_free $SLUICE_PORT || { log "127.0.0.1:$SLUICE_PORT is taken"; return 1; }
    "$BIN/sluice" serve --data-dir "$dir/data" --listen "127.0.0.1:$SLUICE_PORT" \
        >"$dir/server.log" 2>&1 &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    BROKER_STOP=("$BROKER_PID")
    BROKER_DATA=$dir/data
    wait_port $SLUICE_PORT 30
    head -n1 "$dir/server.log" >&2
}

EPMD_PID=
start_amqp() {
    local dir=$1
    port_free $AMQP_PORT || { log "127.0.0.1:$AMQP_PORT is taken"; return 1; }
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
    echo '[].' >"$dir/enabled_plugins"
    # Our own epmd, on loopback only, so that we know its pid and stop it.
    if [ -z "$EPMD_PID" ]; then
        port_free 4369 || { log "127.0.0.1:4369 (epmd) is taken"; return 1; }
        epmd -address 127.0.0.1 -port 4369 >"$WORK/epmd.log" 2>&1 &
        EPMD_PID=$!
        STARTED+=("$EPMD_PID")
        wait_port 4369 10
    fi
    (
        cd "$dir"
        export HOME=$dir ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=4369 \
            RABBITMQ_NODENAME=sluicebench@localhost \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT \
            RABBITMQ_DIST_PORT=25672 \
            RABBITMQ_CONFIG_FILE=$dir/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
            RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
            RABBITMQ_PID_FILE=$dir/rabbit.pid \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        exec /usr/lib/rabbitmq/bin/rabbitmq-server
    ) >"$dir/server.log" 2>&1 &
    local wrapper=$!
    STARTED+=("$wrapper")
    wait_port $AMQP_PORT 90
    local t=0
    until [ -s "$dir/rabbit.pid" ] || [ $t -ge 40 ]; do sleep 0.25; t=$((t + 1)); done
    BROKER_PID=$(cat "$dir/rabbit.pid")
    STARTED+=("$BROKER_PID")
    # The Erlang VM first (it shuts down cleanly on SIGTERM), then its wrapper script.
    BROKER_STOP=("$BROKER_PID" "$wrapper")
    BROKER_DATA=$dir/mnesia
    log "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null) listening on 127.0.0.1:$AMQP_PORT (beam.smp pid $BROKER_PID)"
}

start_nats() {
    local dir=$1
    port_free $NATS_PORT || { log "127.0.0.1:$NATS_PORT is taken"; return 1; }
    cat >"$dir/nats.conf" <<EOF
listen: "127.0.0.1:$NATS_PORT"
jetstream {
  store_dir: "$dir/js"
}
EOF
    nats-server -c "$dir/nats.conf" >"$dir/server.log" 2>&1 &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    BROKER_STOP=("$BROKER_PID")
    BROKER_DATA=$dir/js
    wait_port $NATS_PORT 30
    log "$(nats-server --version) listening on 127.0.0.1:$NATS_PORT (pid $BROKER_PID)"
}

stop_broker() {
    local pid
    for pid in "${BROKER_STOP[@]}"; do
        stop_pid "$pid"
    done
}

# ---- workloads ---------------------------------------------------------------------------
workload_args() {
    local broker=$1
    case $2 in
    1p1c-128) echo "-x 1 -y 1 -s 128 -z $DURATION" ;;
    1p4c-128) echo "-x 1 -y 4 -s 128 -z $DURATION" ;;
    1p1c-4k) echo "-x 1 -y 1 -s 4096 -z $DURATION" ;;
    fanout4-topic) echo "-x 1 -y 1 -s 128 --queues 4 --routing topic -z $DURATION" ;;
    latency-10k) echo "-x 1 -y 1 -s 128 -r 10000 -z $LATENCY_SECS --warmup 5" ;;
    backlog)
        local n=$BACKLOG_COUNT
        [ "$broker" = amqp ] && n=$BACKLOG_COUNT_AMQP
        echo "-x 1 -y 1 -s 128 --backlog -C $n --drain-timeout 120 --settle 10"
        ;;
    *)
        log "unknown workload $2 (known: $ALL_WORKLOADS)"
        return 1
        ;;
    esac
}

# One raw reference (1 MiB pwrite + fdatasync into a preallocated file) and a 4 KiB store run.
disk_reference() {
    "$BIN/storage-bench" --dir "$WORK" --seconds 3 --rounds 1 --sizes 4096 --raw-chunks \
        --overwrite-chunks --json >"$1" 2>/dev/null || log "storage-bench failed"
}

# ---- main ------------------------------------------------------------------------------------
install_peers
log "building release binaries into $TARGET"
cargo build --release --locked -p sluice-broker --bin sluice -p sluice-benches >&2
mkdir -p "$RESULTS" "$WORK"

log "disk: fdatasync'd write rate (storage-bench)"
"$BIN/storage-bench" --dir "$WORK" --seconds 2 --rounds 3 --sizes 128,4096 \
    --raw-chunks 4096,65536 --overwrite-chunks 4096 --json >"$RESULTS/disk.json" 2>"$RESULTS/disk.log"
{
    echo "cpus=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
    echo "rabbitmq=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo -)"
    echo "erlang=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo -)"
    echo "nats=$(nats-server --version 2>/dev/null || echo -)"
    echo "sluice=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo -)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty)"
    echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
} >"$RESULTS/machine.env"

for workload in $WORKLOADS; do
    for broker in $BROKERS; do
        args=$(workload_args "$broker" "$workload")
        dir=$(mktemp -d "$WORK/$broker-$workload-XXXX")
        log "$workload on $broker"
        "start_$broker" "$dir"
        echo "sluice-bench --broker $broker $args --broker-pid \$PID --broker-data-dir \$DATA --label $workload --json $workload-$broker.json" \
            >"$RESULTS/$workload-$broker.cmd"
        # The disk's rate drifts: the 4 KiB workload is compared with references taken right
        # before and right after it.
        if [ "$workload" = 1p1c-4k ]; then
            disk_reference "$RESULTS/$workload-$broker.disk-before.json"
        fi
        # Other work on the machine skews the figures: keep the load average around each run.
        {
            echo "before $(cat /proc/loadavg)"
            echo "cpu-pressure-before $(head -n1 /proc/pressure/cpu 2>/dev/null)"
        } >"$RESULTS/$workload-$broker.load"
        # shellcheck disable=SC2086
        if ! "$BIN/sluice-bench" --broker "$broker" $args --broker-pid "$BROKER_PID" \
            --broker-data-dir "$BROKER_DATA" --label "$workload" \
            --json "$RESULTS/$workload-$broker.json" \
            >"$RESULTS/$workload-$broker.txt" 2>"$RESULTS/$workload-$broker.log"; then
            log "$workload on $broker: incomplete or failed (see $RESULTS/$workload-$broker.log)"
        fi
        if [ "$workload" = 1p1c-4k ]; then
            disk_reference "$RESULTS/$workload-$broker.disk-after.json"
        fi
        {
            echo "after $(cat /proc/loadavg)"
            echo "cpu-pressure-after $(head -n1 /proc/pressure/cpu 2>/dev/null)"
        } >>"$RESULTS/$workload-$broker.load"
        cat "$RESULTS/$workload-$broker.txt" >&2 || true
        stop_broker
        rm -rf "$dir"
    done
done
if [ -n "$EPMD_PID" ]; then
    stop_pid "$EPMD_PID"
    EPMD_PID=
fi

if [ "$REPORT" = 1 ]; then
    log "writing BENCHMARKS.md and charts"
    venv=$ROOT/target/bench-venv
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet matplotlib
    fi
    "$venv/bin/python" benches/peers_report.py --results "$RESULTS" \
        --markdown BENCHMARKS.md --charts benches/charts
fi
log "done; results in $RESULTS"
