#!/usr/bin/env bash
# The etcd spike of docs/cluster.md ("Why openraft and not etcd"): what the etcd route would
# start from on this machine. A 3-member etcd on loopback (Debian's etcd-server), then
#   1. its replicated write rate: 128-byte puts through the v3 JSON gateway from 32 keep-alive
#      connections for 10 s (each put is durable on a majority, as a confirm would be);
#   2. lease failover, the LavinMQ way of electing a queue leader: a "leader" holds a key on a
#      lease it keeps alive; it is killed (-9) and the time until the key is gone (when a
#      follower could take over) is measured, 10 times, with the shortest TTL etcd accepts
#      with the same election timeout as Sluice's default (1 s);
#   3. the LavinMQ shape end to end, 3 times: `etcd-route-bench w1` (benches/src/bin/etcd_route.rs,
#      a spike) starts its own 3-member etcd like this one (after this one is stopped) and 3
#      nodes; etcd elects the leader with a lease, our own code ships the queue log to the
#      followers; replicated W1 as `cluster-bench w1` runs it on openraft.
# Usage: benches/etcd-spike.sh   (needs etcd and etcdctl: apt-get install etcd-server etcd-client;
# builds etcd-route-bench into $CARGO_TARGET_DIR, default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
D=$(mktemp -d /tmp/etcd-spike-XXXX)
CL="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$D"
}
trap stop EXIT
for i in 1 2 3; do
    etcd --name e$i --data-dir "$D/e$i" --listen-peer-urls http://127.0.0.1:2380$i \
        --initial-advertise-peer-urls http://127.0.0.1:2380$i \
        --listen-client-urls http://127.0.0.1:2379$i --advertise-client-urls http://127.0.0.1:2379$i \
        --initial-cluster "$CL" --initial-cluster-state new \
        --heartbeat-interval 100 --election-timeout 1000 >"$D/e$i.log" 2>&1 &
    pids+=($!)
done
EP=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
export ETCDCTL_API=3
for _ in $(seq 100); do etcdctl --endpoints $EP endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
etcdctl --endpoints $EP endpoint health

echo "== 1. replicated puts, 128 B values, 32 connections, 10 s"
python3 - <<'PY'
import base64, http.client, json, threading, time
ports = [23791, 23792, 23793]
body_value = base64.b64encode(b"x" * 128).decode()
stop_at = time.monotonic() + 10
counts = [0] * 32
def worker(i):
    conn = http.client.HTTPConnection("127.0.0.1", ports[i % 3])
    n = 0
    while time.monotonic() < stop_at:
        key = base64.b64encode(f"spike/{i}/{n}".encode()).decode()
        conn.request("POST", "/v3/kv/put", json.dumps({"key": key, "value": body_value}))
        r = conn.getresponse(); r.read()
        if r.status != 200:
            raise SystemExit(f"put failed: {r.status}")
        n += 1
    counts[i] = n
threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
t0 = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(f"{sum(counts) / (time.monotonic() - t0):,.0f} puts/s")
PY

echo "== 2. lease failover (kill -9 of the lease holder -> key gone), 10 times"
TTL=2
for round in $(seq 10); do
    lease=$(etcdctl --endpoints $EP lease grant $TTL | awk '{print $2}')
    etcdctl --endpoints $EP put --lease="$lease" spike/leader node-a >/dev/null
    etcdctl --endpoints $EP lease keep-alive "$lease" >/dev/null 2>&1 &
    holder=$!
    sleep 1 # the holder keeps the lease alive for a while before it dies
    start=$(date +%s%N)
    kill -9 $holder; wait $holder 2>/dev/null || true
    while [ -n "$(etcdctl --endpoints $EP get spike/leader --print-value-only)" ]; do sleep 0.02; done
    echo "round $round: key gone $(( ($(date +%s%N) - start) / 1000000 )) ms after the kill (TTL ${TTL} s)"
done

echo "== 3. replicated W1 on etcd leadership + our own log shipping (etcd-route-bench), 3 runs"
stop
pids=()
trap - EXIT
cargo build --release -p sluice-benches --bin etcd-route-bench >&2
for run in 1 2 3; do
    "${CARGO_TARGET_DIR:-target}/release/etcd-route-bench" w1 --duration 20
done
