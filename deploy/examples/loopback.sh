#!/usr/bin/env bash
# A real federation on one machine: a SuperLink with TLS and node authentication, two registered SuperNodes
# each with its own data file, and a 2-round run with sample-level DP. Run from anywhere; stops what it starts.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)       # the fedtrain checkout: `flwr run .` runs from here
WORK=${WORK:-/tmp/fedtrain-loopback}            # credentials, data, Flower homes, logs, runs
LINK_HOST=${LINK_HOST:-127.0.0.1}               # the SuperLink's address, as the devices reach it
LINK_PORT=${LINK_PORT:-9400}                    # its one port: Fleet, Control and Runtime APIs
NODE_PORT=${NODE_PORT:-9410}                    # SuperNode i's local Runtime API: NODE_PORT+i (plain http)
ROUNDS=${ROUNDS:-2}
RUN_EXTRA=${RUN_EXTRA:-}                        # more run config, e.g. "secure-aggregation=true"
WARM_WORKER=${WARM_WORKER:-}                    # 1: a warm worker per device (torch loaded once, not per message)
WAIT_S=${WAIT_S:-180}                           # how long to wait for a process to come up
NETNS_LINK=${NETNS_LINK:-}                      # empty on loopback; network namespaces in the namespace test
NETNS_NODES=${NETNS_NODES:-}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # never install the app's dependencies per run

[ ! -e "$WORK/kit" ] || { echo "error: $WORK holds an earlier walkthrough: remove it or set WORK" >&2; exit 1; }
mkdir -p "$WORK"/{home,logs,pids}
WORK=$(cd "$WORK" && pwd)                       # absolute: the SuperLink passes certificate paths on as given
KIT=$WORK/kit
CLI_HOME=$WORK/home/cli                         # the operator's Flower home (connection, `flwr` commands)

# Where the devices and the operator are (the namespace test puts them in their own network namespace).
on_nodes() { if [ -n "$NETNS_NODES" ]; then ip netns exec "$NETNS_NODES" "$@"; else "$@"; fi; }

# Start a long-running process (in network namespace NS, if given) in its own process group; remember its PID.
start() {
  local name=$1 ns=$2; shift 2
  if [ -n "$ns" ]; then set -- ip netns exec "$ns" "$@"; fi
  setsid "$@" >"$WORK/logs/$name.log" 2>&1 &
  echo $! >"$WORK/pids/$name.pid"
}

# Wait until a process's log shows a line; if it exits or takes too long, say why in one line and fail.
wait_for() {
  local name=$1 pattern=$2 log=$WORK/logs/$1.log pid why deadline=$((SECONDS + WAIT_S))
  pid=$(cat "$WORK/pids/$name.pid")
  until grep -q "$pattern" "$log"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      if grep -q "code: 2004" "$log"; then why="the SuperLink refused its key (not registered)"
      elif grep -q "CERTIFICATE_VERIFY_FAILED" "$log"; then why="TLS: the SuperLink's certificate does not match"
      elif grep -q "Exit Code: 305" "$log"; then why="no connection to the SuperLink (address, port or TLS)"
      else why="no '$pattern' in its log after ${WAIT_S} s or it exited"; fi
      echo "error: $name did not come up: $why; see $log" >&2
      return 1
    fi
    sleep 1
  done
}

# Stop every process this script started, by PID (each one's whole process group), on any exit.
stop() {
  local f pid p deadline=$((SECONDS + 20))
  for f in "$WORK"/pids/*.pid; do
    [ -e "$f" ] && { kill -TERM -- "-$(cat "$f")" || kill -TERM "$(cat "$f")" || true; } 2>/dev/null
  done
  for f in "$WORK"/pids/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    { kill -KILL -- "-$pid" || kill -KILL "$pid" || true; } 2>/dev/null
    rm -f "$f"
  done
  # Flower's SuperExec and ServerApp leave the SuperLink's process group: find them by their FLWR_HOME.
  for p in /proc/[0-9]*; do
    grep -qzF "FLWR_HOME=$WORK/home/" "$p/environ" 2>/dev/null && kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM                            # Ctrl-C and kill run the EXIT trap too

# 1. Credentials: a CA, the SuperLink's certificate for LINK_HOST, one key pair per device.
fedtrain deploy init "$KIT" --superlink-host "$LINK_HOST" --devices 2 --port "$LINK_PORT"

# 2. Data: one file per device, and the server's test file for central evaluation.
fedtrain split "$WORK/data" --run-config "num-clients=2 partitioner=iid dp-level='sample'" --server-test

# 3. The SuperLink: TLS, node authentication, persistent state, no dependency installation.
FLWR_HOME=$WORK/home/superlink start superlink "$NETNS_LINK" flower-superlink \
  --ssl-ca-certfile "$KIT/ca.crt" --ssl-certfile "$KIT/superlink.crt" --ssl-keyfile "$KIT/superlink.key" \
  --enable-supernode-auth --database "$WORK/superlink.db" --disable-runtime-dependency-installation \
  --host "$LINK_HOST" --port "$LINK_PORT"
wait_for superlink "Uvicorn running"

# 4. Register both devices' public keys (the operator's `flwr`, with the connection `init` wrote).
mkdir -p "$CLI_HOME"
cp "$KIT/connection.toml" "$CLI_HOME/config.toml"
for i in 0 1; do
  FLWR_HOME=$CLI_HOME on_nodes flwr supernode register "$KIT/devices/device-$i/auth.key.pub" fedtrain
done

# 5. Two SuperNodes, each with its own key, its own data file and its own local port (and its warm worker).
for i in 0 1; do
  WARM=""
  if [ -n "$WARM_WORKER" ]; then
    start "worker-$i" "$NETNS_NODES" fedtrain deploy worker "$KIT/devices/device-$i"
    wait_for "worker-$i" "ready on"
    WARM=" warm-worker='$KIT/devices/device-$i/worker/worker.sock'"
  fi
  FLWR_HOME=$WORK/home/device-$i start "device-$i" "$NETNS_NODES" flower-supernode \
    --root-certificates "$KIT/devices/device-$i/ca.crt" \
    --auth-supernode-private-key "$KIT/devices/device-$i/auth.key" \
    --superlink "$LINK_HOST:$LINK_PORT" --host 127.0.0.1 --port $((NODE_PORT + i)) \
    --node-config "data-path='$WORK/data/client-$i.npz' partition-id=$i num-partitions=2$WARM"
done
wait_for device-0 "SuperNode ID"
wait_for device-1 "SuperNode ID"
FLWR_HOME=$CLI_HOME on_nodes flwr supernode list fedtrain

# 6. The run: node-local data, central evaluation on the server's file, sample-level DP, 2 rounds.
cd "$REPO"
FLWR_HOME=$CLI_HOME on_nodes flwr run . fedtrain --stream --run-config "data-source='node' num-clients=2 \
server-data-path='$WORK/data/server-test.npz' normalize='range' dp-level='sample' num-rounds=$ROUNDS \
out-dir='$WORK/runs' progress=false $RUN_EXTRA" &
echo $! >"$WORK/pids/flwr-run.pid"
wait $!                                         # a signal to this script ends the wait (and the run) at once

# flwr run exits 0 even when the ServerApp failed: the run folder's summary says whether the run completed.
RUN_DIR=$(ls -td "$WORK"/runs/*/ 2>/dev/null | head -1 || true)
grep -qs '"status": "completed"' "${RUN_DIR}summary.json" || { echo "error: the run did not complete" >&2; exit 1; }
echo "run folder: $RUN_DIR"

# 7. Stopping is the EXIT trap: every PID in $WORK/pids, then this script's exit code.
