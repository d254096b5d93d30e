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
#                  also: rabbitmq-qq = RabbitMQ quorum queues on a 3-node RabbitMQ cluster on
#                  this machine (QQ_NODES nodes; one node, said so, if no cluster can form)
#   BUILD          0 = use the release binaries already in BIN, build nothing  [1]
#   BIN            where the release binaries are      [$CARGO_TARGET_DIR/release]
#   WORKLOADS      workloads to run (names below)      [all]
#   DURATION       seconds per throughput workload     [20]
#   LATENCY_SECS   seconds of the fixed-rate workload  [30] (the first 5 are warm-up)
#   BACKLOG_COUNT  messages of the backlog workload    [10000000]
#   BACKLOG_COUNT_AMQP  the same for RabbitMQ only     [2000000: RabbitMQ 3.10 classic queues hold a backlog in memory]
#   RESULTS        where JSON and logs go              [target/bench-results/peers]
#   WORK           where the brokers' data dirs go     [target/bench-work] (a real disk)
#   REPORT         1 = rewrite BENCHMARKS.md's section and charts afterwards  [1]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET/release}
BUILD=${BUILD:-1}
BROKERS=${BROKERS:-"sluice amqp nats"}
ALL_WORKLOADS="1p1c-128 1p4c-128 1p1c-4k fanout4-topic latency-10k backlog"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
DURATION=${DURATION:-20}
LATENCY_SECS=${LATENCY_SECS:-30}
BACKLOG_COUNT=${BACKLOG_COUNT:-10000000}
BACKLOG_COUNT_AMQP=${BACKLOG_COUNT_AMQP:-2000000}
RESULTS=${RESULTS:-$ROOT/target/bench-results/peers}
WORK=${WORK:-$ROOT/target/bench-work}
REPORT=${REPORT:-1}

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

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
        case $broker in amqp | rabbitmq-qq) n=$BACKLOG_COUNT_AMQP ;; esac
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
if [ "$BUILD" = 1 ]; then
    log "building release binaries into $TARGET"
    # Two commands: `--bin sluice` would also keep the benches package to a binary named sluice.
    cargo build --release --locked -p sluice-broker --bin sluice >&2
    cargo build --release --locked -p sluice-benches --bins >&2
else
    log "using the release binaries in $BIN (BUILD=0)"
fi
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
        new_data_dir "$broker-$workload"
        dir=$DATA_DIR
        log "$workload on $broker"
        "start_${broker//-/_}" "$dir"
        backend=$(bench_backend "$broker")
        extra=()
        [ -n "$BROKER_URL" ] && extra+=(--url "$BROKER_URL")
        # The quorum queues stay until their type and members are on record (below).
        [ "$broker" = rabbitmq-qq ] && extra+=(--no-cleanup --prefix "qq$workload")
        echo "sluice-bench --broker $backend $args ${extra[*]} --broker-pid \$PID --broker-data-dir \$DATA --label $workload --json $workload-$broker.json" \
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
        if ! "$BIN/sluice-bench" --broker "$backend" $args "${extra[@]}" --broker-pid "$BROKER_PID" \
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
        if [ "$broker" = rabbitmq-qq ]; then
            qq_describe_queues "qq$workload" "$RESULTS/$workload-$broker.queues"
            cp "$dir/cluster-status.txt" "$RESULTS/$workload-$broker.cluster" 2>/dev/null || true
            log "the queue (type, leader, members):"
            cat "$RESULTS/$workload-$broker.queues" >&2 || true
        fi
        stop_broker
        rm -rf "$dir"
    done
done
stop_epmd

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
