#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for testing what crosses nodes (placement, a node lost):
# a head and N workers (default 2), each its own `ray start` with its own ports, all under one
# temp dir, each node with a custom resource and a label naming it (resource "shunter-worker-K": 1,
# label shunter-node=worker-K; the head: "shunter-head", shunter-node=head).
#
#   bash deploy/local-cluster.sh start    # prints the head's address: shunter serve --address <it>
#   bash deploy/local-cluster.sh status   # the nodes, from `ray status`
#   bash deploy/local-cluster.sh stop-worker K   # stop worker K only (a node lost)
#   bash deploy/local-cluster.sh start-worker K  # bring it back
#   bash deploy/local-cluster.sh stop     # stops only this cluster's processes (found by its temp dir)
#
# Environment: SHUNTER_CLUSTER_DIR (default /tmp/shunter-cluster-$UID: temp dir, logs),
# SHUNTER_CLUSTER_PORT (the head's GCS port, default 26379; node K uses ports PORT+10K+1..7 and
# worker ports PORT+100+100K..+99), SHUNTER_CLUSTER_WORKERS (2), SHUNTER_CLUSTER_CPUS (CPUs per
# worker, 2; the head gets 0: it runs the frontend, not replicas), PYTHON (the Python whose
# Ray and Shunter the nodes run; default ./.venv/bin/python).
# `ray stop` is never used: it stops every Ray process of the machine, other clusters' too.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${SHUNTER_CLUSTER_DIR:-/tmp/shunter-cluster-$(id -u)}
PORT=${SHUNTER_CLUSTER_PORT:-26379}
WORKERS=${SHUNTER_CLUSTER_WORKERS:-2}
CPUS=${SHUNTER_CLUSTER_CPUS:-2}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
TEMP=$DIR/ray
HEAD=127.0.0.1:$PORT
ray_cli() { "$PYTHON" -m ray.scripts.scripts "$@"; }
# A test cluster on loopback: no token authentication, so a driver joins with `--address` alone
# (Ray 2.59+ would turn it on for the head only, and the workers, not given the token, fail to join).
export RAY_AUTH_MODE=disabled

# Ports of node K (0: the head): none shared with another node or another cluster's defaults.
node_ports() {
    local k=$1 b=$((PORT + 10 * $1))
    echo --node-manager-port=$((b + 1)) --object-manager-port=$((b + 2)) \
        --dashboard-agent-listen-port=$((b + 3)) --dashboard-agent-grpc-port=$((b + 4)) \
        --metrics-export-port=$((b + 5)) --runtime-env-agent-port=$((b + 6)) \
        --min-worker-port=$((PORT + 100 + 100 * k)) --max-worker-port=$((PORT + 199 + 100 * k))
}

# The pids of this cluster's processes (their command lines name its temp dir), or of worker K only.
pids() {
    local pattern=$TEMP
    local pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ $pid == $$ ]] && continue
        local cmd
        cmd=$( { tr '\0' ' ' < /proc/$pid/cmdline; } 2>/dev/null) || continue
        [[ $cmd == *"$pattern"* ]] || continue
        if [[ -n ${1:-} ]]; then   # worker K: its raylet and the processes it started
            [[ $cmd == *"--node-manager-port=$((PORT + 10 * $1 + 1))"* ]] || continue
        fi
        echo "$pid"
    done
}

start_worker() {
    local k=$1
    # shellcheck disable=SC2046
    ray_cli start --address="$HEAD" --node-ip-address=127.0.0.1 --temp-dir="$TEMP" --num-cpus="$CPUS" --num-gpus=0 \
        --resources="{\"shunter-worker-$k\": 1}" --labels="shunter-node=worker-$k" --disable-usage-stats $(node_ports "$k") \
        > "$DIR/worker-$k.log" 2>&1 || { cat "$DIR/worker-$k.log" >&2; exit 1; }
    echo "worker $k: started (resource shunter-worker-$k, label shunter-node=worker-$k)"
}

# The pids of worker K's node: its raylet, and every process whose parent chain leads to it.
worker_pids() {
    local raylet
    raylet=$(for p in $(pids); do
        { tr '\0' ' ' < /proc/$p/cmdline; } 2>/dev/null | grep -q -- "raylet.*--node_manager_port=$((PORT + 10 * $1 + 1))" && echo "$p"
    done)
    [[ -n $raylet ]] || return 0
    local all=$raylet frontier=$raylet
    while [[ -n $frontier ]]; do
        local next=""
        for p in $frontier; do next="$next $(ps -o pid= --ppid "$p" 2>/dev/null || true)"; done
        frontier=$(echo $next)
        all="$all $frontier"
    done
    echo $all
}

stop_pids() {
    local list=("$@")
    [[ ${#list[@]} -gt 0 ]] || return 0
    kill -TERM "${list[@]}" 2>/dev/null || true
    for _ in $(seq 20); do
        local alive=()
        for p in "${list[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [[ ${#alive[@]} -eq 0 ]] && return 0
        sleep 0.25
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

case "${1:-}" in
    start)
        if [[ -n "$(pids)" ]]; then echo "error: a cluster already runs under $TEMP (stop it first)" >&2; exit 1; fi
        mkdir -p "$DIR"
        # shellcheck disable=SC2046
        ray_cli start --head --node-ip-address=127.0.0.1 --port="$PORT" --temp-dir="$TEMP" --num-cpus=0 --num-gpus=0 \
            --resources='{"shunter-head": 1}' --labels=shunter-node=head --include-dashboard=false --ray-client-server-port=$((PORT + 7)) --disable-usage-stats \
            $(node_ports 0) > "$DIR/head.log" 2>&1 || { cat "$DIR/head.log" >&2; exit 1; }
        echo "head: started at $HEAD"
        for k in $(seq 1 "$WORKERS"); do start_worker "$k"; done
        echo "address: $HEAD"
        ;;
    start-worker) start_worker "${2:?worker number}" ;;
    stop-worker)
        # shellcheck disable=SC2046
        stop_pids $(worker_pids "${2:?worker number}")
        echo "worker $2: stopped"
        ;;
    stop)
        # shellcheck disable=SC2046
        stop_pids $(pids)
        echo "stopped (every process under $TEMP)"
        ;;
    status)
        ray_cli status --address="$HEAD"
        ;;
    *) echo "usage: bash deploy/local-cluster.sh start|stop|status|stop-worker K|start-worker K" >&2; exit 2 ;;
esac
