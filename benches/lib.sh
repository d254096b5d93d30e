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
    # The HTTP admin API takes a free port: a broker already on the default one must not
    # keep the benchmark from starting.
    "$BIN/sluice" serve --data-dir "$dir/data" --listen "127.0.0.1:$SLUICE_PORT" \
        --http-listen 127.0.0.1:0 >"$dir/server.log" 2>&1 &
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

stop_epmd() {
    if [ -n "$EPMD_PID" ]; then
        stop_pid "$EPMD_PID"
        EPMD_PID=
    fi
}
