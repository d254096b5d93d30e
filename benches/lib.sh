# Shared by the benchmark scripts (sourced, not run): the brokers' ports, the processes the
# script started (each stopped by its pid on exit, also on error or Ctrl-C), installing the
# peers from Debian's packages, and starting and stopping each broker on 127.0.0.1.
#
# The sourcing script sets BIN (release binaries), BROKERS (the peers to install) and WORK,
# and runs with `set -euo pipefail`.
SLUICE_PORT=5680
AMQP_PORT=5672
NATS_PORT=4222

log() { printf '== %s\n' "$*" >&2; }

# ---- processes we started, stopped by pid on exit; their data dirs removed -----------
STARTED=()      # pids to SIGTERM, last started first
DATA_DIRS=()    # brokers' temporary directories (see new_data_dir)
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
    for dir in "${DATA_DIRS[@]}"; do
        rm -rf "$dir"
    done
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

# A fresh directory under $WORK named after $1, removed on exit even if the run fails.
# Sets DATA_DIR (a command substitution would lose the bookkeeping in its subshell).
new_data_dir() {
    DATA_DIR=$(mktemp -d "$WORK/$1-XXXX")
    DATA_DIRS+=("$DATA_DIR")
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
    case " $BROKERS " in *" amqp "* | *" rabbitmq-qq "*) command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server) ;; esac
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
# directory), BROKER_STOP (pids to stop, in order) and BROKER_URL (empty: the back end's
# default URL). Broker a-b starts with start_a_b.
start_sluice() {
    local dir=$1
    port_free $SLUICE_PORT || { log "127.0.0.1:$SLUICE_PORT is taken"; return 1; }
    # The HTTP admin API takes a free port: a broker already on the default one must not
    # keep the benchmark from starting.
    "$BIN/sluice" serve --data-dir "$dir/data" --listen "127.0.0.1:$SLUICE_PORT" \
        --http-listen 127.0.0.1:0 >"$dir/server.log" 2>&1 &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    BROKER_STOP=("$BROKER_PID")
    BROKER_DATA=$dir/data
    BROKER_URL=
    wait_port $SLUICE_PORT 30
    head -n1 "$dir/server.log" >&2
}

EPMD_PID=
EPMD_SHARED=
# Our own epmd, on loopback only, so that we know its pid and stop it. An epmd already on
# 127.0.0.1:4369 (someone else's) is used as it is, and left running.
ensure_epmd() {
    [ -n "$EPMD_PID$EPMD_SHARED" ] && return 0
    if ! port_free 4369; then
        log "127.0.0.1:4369: an epmd runs already; using it"
        EPMD_SHARED=1
        return 0
    fi
    epmd -address 127.0.0.1 -port 4369 >"$WORK/epmd.log" 2>&1 &
    EPMD_PID=$!
    STARTED+=("$EPMD_PID")
    wait_port 4369 10
}

# Starts one RabbitMQ node in $1 (its mnesia, logs and config there) with Erlang cookie home
# $2, node name $3, AMQP port $4 and Erlang distribution port $5, on 127.0.0.1 only. Sets
# RABBIT_PID (the beam.smp) and RABBIT_WRAPPER (its start script).
start_rabbit_node() {
    local dir=$1 home=$2 name=$3 port=$4 dist=$5
    port_free "$port" || { log "127.0.0.1:$port is taken"; return 1; }
    port_free "$dist" || { log "127.0.0.1:$dist is taken"; return 1; }
    mkdir -p "$dir/mnesia" "$dir/log"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users.guest = true\n' "$port" >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    ensure_epmd
    (
        cd "$dir"
        export HOME=$home ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=4369 \
            RABBITMQ_NODENAME=$name \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
            RABBITMQ_DIST_PORT=$dist \
            RABBITMQ_CONFIG_FILE=$dir/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
            RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
            RABBITMQ_PID_FILE=$dir/rabbit.pid \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        exec /usr/lib/rabbitmq/bin/rabbitmq-server
    ) >"$dir/server.log" 2>&1 &
    RABBIT_WRAPPER=$!
    STARTED+=("$RABBIT_WRAPPER")
    wait_port "$port" 90
    local t=0
    until [ -s "$dir/rabbit.pid" ] || [ $t -ge 40 ]; do sleep 0.25; t=$((t + 1)); done
    RABBIT_PID=$(cat "$dir/rabbit.pid")
    STARTED+=("$RABBIT_PID")
}

start_amqp() {
    local dir=$1
    start_rabbit_node "$dir" "$dir" sluicebench@localhost $AMQP_PORT 25672
    BROKER_PID=$RABBIT_PID
    # The Erlang VM first (it shuts down cleanly on SIGTERM), then its wrapper script.
    BROKER_STOP=("$BROKER_PID" "$RABBIT_WRAPPER")
    BROKER_DATA=$dir/mnesia
    BROKER_URL=
    log "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null) listening on 127.0.0.1:$AMQP_PORT (beam.smp pid $BROKER_PID)"
}

# RabbitMQ quorum queues: QQ_NODES (3) RabbitMQ nodes on this machine (AMQP 5672, 5673, ...;
# Erlang distribution 25672, 25673, ...; one directory each, one shared Erlang cookie) joined
# into one cluster, and a vhost "qq" whose default queue type is quorum, so the benchmark's
# durable queue is a quorum queue (a Raft group over every node; a confirm means a majority
# has it on disk). The benchmark talks to node 1, which declares the queue and so leads it.
# If the nodes cannot be clustered here, it says so and measures node 1 alone (the queue is
# then a quorum queue of one member).
QQ_NODES=${QQ_NODES:-3}
QQ_HOME=
qq_ctl() {
    HOME=$QQ_HOME ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=4369 \
        timeout 120 /usr/lib/rabbitmq/bin/rabbitmqctl "$@"
}
start_rabbitmq_qq() {
    local dir=$1 i
    QQ_HOME=$dir
    local pids=() wrappers=()
    for ((i = 1; i <= QQ_NODES; i++)); do
        start_rabbit_node "$dir/node$i" "$dir" "sluiceqq$i@localhost" \
            $((AMQP_PORT + i - 1)) $((25672 + i - 1))
        pids+=("$RABBIT_PID")
        wrappers+=("$RABBIT_WRAPPER")
    done
    local members=1
    for ((i = 2; i <= QQ_NODES; i++)); do
        if qq_ctl -n "sluiceqq$i@localhost" stop_app >&2 &&
            qq_ctl -n "sluiceqq$i@localhost" join_cluster sluiceqq1@localhost >&2 &&
            qq_ctl -n "sluiceqq$i@localhost" start_app >&2; then
            members=$((members + 1))
        else
            log "node sluiceqq$i could not join sluiceqq1"
        fi
    done
    # Followers first, node 1 (the leader) last; each VM before its wrapper script.
    BROKER_STOP=()
    for ((i = QQ_NODES - 1; i >= 0; i--)); do
        BROKER_STOP+=("${pids[i]}" "${wrappers[i]}")
    done
    if [ "$members" -lt "$QQ_NODES" ]; then
        log "RabbitMQ: no $QQ_NODES-node cluster here; measuring ONE node (a quorum queue of one member)"
        for ((i = QQ_NODES - 1; i >= 1; i--)); do
            stop_pid "${pids[i]}"
            stop_pid "${wrappers[i]}"
        done
        BROKER_STOP=("${pids[0]}" "${wrappers[0]}")
        members=1
    fi
    qq_ctl -n sluiceqq1@localhost add_vhost qq --default-queue-type quorum >&2
    qq_ctl -n sluiceqq1@localhost set_permissions -p qq guest '.*' '.*' '.*' >&2
    qq_ctl -n sluiceqq1@localhost cluster_status >"$dir/cluster-status.txt" 2>&1 || true
    BROKER_PID=${pids[0]}
    BROKER_DATA=$dir
    BROKER_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/qq"
    log "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null): RabbitMQ cluster of $members node(s) (AMQP 127.0.0.1:$AMQP_PORT.., node 1 beam.smp pid $BROKER_PID), quorum queues in vhost qq"
}

# After a rabbitmq-qq run with --no-cleanup: the queues named $1* (type, leader, members) into
# $2, for the record that they were quorum queues on every node; then deletes them.
qq_describe_queues() {
    local prefix=$1 out=$2 q
    qq_ctl -n sluiceqq1@localhost list_queues -p qq name type leader members messages >"$out" 2>&1 || true
    for q in $(qq_ctl -q -n sluiceqq1@localhost list_queues -p qq name 2>/dev/null | grep "^$prefix" || true); do
        qq_ctl -n sluiceqq1@localhost delete_queue -p qq "$q" >/dev/null 2>&1 || true
    done
}

# The sluice-bench back end (--broker) of a peer.
bench_backend() {
    case $1 in
    rabbitmq-qq) echo amqp ;;
    *) echo "$1" ;;
    esac
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
    BROKER_URL=
    wait_port $NATS_PORT 30
    log "$(nats-server --version) listening on 127.0.0.1:$NATS_PORT (pid $BROKER_PID)"
}

stop_broker() {
    local pid
    for pid in "${BROKER_STOP[@]}"; do
        stop_pid "$pid"
    done
}

stop_epmd() {
    if [ -n "$EPMD_PID" ]; then
        stop_pid "$EPMD_PID"
        EPMD_PID=
    fi
}
