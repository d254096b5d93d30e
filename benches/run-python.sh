#!/usr/bin/env bash
# The Python client against pika and RabbitMQ, in one run on this machine: builds the release
# broker, makes a virtual environment with the sluice package (release build) and pika,
# measures the floor of a synchronous publisher (loopback round trip + one durable small write
# on the disk the brokers use), then starts a fresh Sluice and a fresh RabbitMQ on 127.0.0.1
# with temporary data directories, runs client-py/bench/bench.py against each, stops each by
# its pid, and prints the Markdown table for BENCHMARKS.md.
#
#   benches/run-python.sh                 # needs root for apt-get if RabbitMQ is missing
#   RUNS=5 MESSAGES=100000 benches/run-python.sh
#
# Settings (environment):
#   RUNS       best of how many runs per client        [3]
#   SINGLE     publishes confirmed one at a time       [2000]
#   MESSAGES   messages of the batch and consume runs  [50000]
#   RESULTS    where JSON and logs go                  [target/bench-results/python]
#   WORK       where the brokers' data dirs go         [target/bench-work] (a real disk)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
BROKERS="sluice amqp"
RUNS=${RUNS:-3}
SINGLE=${SINGLE:-2000}
MESSAGES=${MESSAGES:-50000}
RESULTS=${RESULTS:-$ROOT/target/bench-results/python}
WORK=${WORK:-$ROOT/target/bench-work}

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

install_peers
log "building the release broker into $TARGET"
cargo build --release --locked -p sluice-broker --bin sluice >&2
venv=$TARGET/py-bench-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
log "installing the sluice package (release build) and pika into $venv"
"$venv/bin/python" -m pip install --quiet -r client-py/bench/requirements.txt
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps ./client-py
mkdir -p "$RESULTS" "$WORK"
bench() {
    "$venv/bin/python" client-py/bench/bench.py "$@" --runs "$RUNS" --single "$SINGLE" \
        --messages "$MESSAGES"
}

log "floor: loopback round trip and one durable small write"
bench floor --dir "$WORK" >"$RESULTS/floor.json"
for broker in $BROKERS; do
    new_data_dir "python-$broker"
    dir=$DATA_DIR
    "start_$broker" "$dir"
    echo "load before $(cat /proc/loadavg)" >"$RESULTS/$broker.load"
    if [ "$broker" = sluice ]; then
        log "sluice (Python client)"
        bench sluice --url "sluice://guest:guest@127.0.0.1:$SLUICE_PORT" >"$RESULTS/sluice.json"
    else
        log "pika against RabbitMQ"
        bench pika --url "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2F" >"$RESULTS/pika.json"
    fi
    echo "load after $(cat /proc/loadavg)" >>"$RESULTS/$broker.load"
    stop_broker
    rm -rf "$dir"
done
stop_epmd
"$venv/bin/python" client-py/bench/bench.py report \
    "$RESULTS/sluice.json" "$RESULTS/pika.json" "$RESULTS/floor.json" | tee "$RESULTS/table.md"
log "done; results in $RESULTS"
