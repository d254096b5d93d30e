#!/bin/bash
# Starts one Sluice node of the StatefulSet (the ConfigMap's copy of deploy/k8s/start.sh).
#
# The pod's ordinal (NAME-N) gives the node id of a new volume: N+1, plus SLUICE_NODE_ID_OFFSET
# (default 0); the node then keeps its id in the volume (DATA/cluster/node-id). Pod 0 bootstraps a new
# cluster only when its data directory holds no cluster state AND no peer answers /readyz
# with 200 (a peer that is ready is a member that knows the leader): every other start joins
# the peers by their headless-Service DNS names. A member restarting with its data ignores
# --join. A pod whose volume was lost is refused under its old id (it forgot that member's
# votes): remove the old member (`sluice cluster remove-node ID`) and raise
# SLUICE_NODE_ID_OFFSET (by 10, say); the pod joins as a new node and the cluster rebuilds
# its replicas there, while the pods that kept their volumes keep their ids.
set -euo pipefail

name=${HOSTNAME:?}
set_name=${name%-*}
ordinal=${name##*-}
replicas=${SLUICE_REPLICAS:-3}
domain=${SLUICE_PEER_DOMAIN:?the headless Service domain, e.g. sluice-headless.NAMESPACE.svc.cluster.local}
data=${SLUICE_DATA_DIR:?}
client_port=${SLUICE_CLIENT_PORT:-5680}
http_port=${SLUICE_HTTP_PORT:-15680}
cluster_port=${SLUICE_CLUSTER_PORT:-25680}
# Rounds of /readyz probes (2 s apart) before pod 0 concludes that no cluster exists.
probes=${SLUICE_BOOTSTRAP_PROBES:-5}
bin=${SLUICE_BIN:-sluice}
# Clients are sent to a queue's leader by the address its node listens on: the pod's IP.
client_ip=${POD_IP:-0.0.0.0}

# Sluice records its id in the volume once the cluster let it in; a node it refused (a lost
# volume under its old id) records none and starts again under the offset.
id_file="$data/cluster/node-id"
if [ -s "$id_file" ]; then
    node_id=$(cat "$id_file")
else
    node_id=$((ordinal + 1 + ${SLUICE_NODE_ID_OFFSET:-0}))
fi

peers=()
for ((i = 0; i < replicas; i++)); do
    [ "$i" = "$ordinal" ] || peers+=("$set_name-$i.$domain")
done

# GET /readyz on $1 answers 200 (bounded: an unresolvable or silent peer costs 3 s).
peer_ready() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /readyz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$1" >&3
        IFS= read -r status <&3 || exit 1
        case $status in "HTTP/1.1 200"*) exit 0 ;; *) exit 1 ;; esac
    ' _ "$1" "$http_port" 2>/dev/null
}

any_peer_ready() {
    local peer
    for peer in "${peers[@]}"; do
        peer_ready "$peer" && return 0
    done
    return 1
}

bootstrap=0
if [ "$ordinal" = 0 ] && [ ! -e "$data/cluster" ]; then
    bootstrap=1
    for ((round = 0; round < probes; round++)); do
        if any_peer_ready; then
            bootstrap=0
            break
        fi
        [ $((round + 1)) -lt "$probes" ] && sleep 2
    done
fi

join=()
if [ "$bootstrap" = 0 ] && [ ${#peers[@]} -gt 0 ]; then
    addrs=$(printf "%s:$cluster_port," "${peers[@]}")
    join=(--join "${addrs%,}")
fi
if [ "$bootstrap" = 1 ]; then
    echo "start.sh: node $node_id: empty data directory and no ready peer: bootstrapping a new cluster" >&2
else
    echo "start.sh: node $node_id: joining ${peers[*]:-nobody}" >&2
fi
mkdir -p "$data"
exec "$bin" serve \
    --node-id "$node_id" \
    --data-dir "$data" \
    --listen "$client_ip:$client_port" \
    --http-listen "0.0.0.0:$http_port" \
    --cluster-listen "0.0.0.0:$cluster_port" \
    --cluster-advertise "$name.$domain:$cluster_port" \
    "${join[@]}"
