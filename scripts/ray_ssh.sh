#!/usr/bin/env bash
# A Ray cluster on machines reachable over SSH: the head on this machine, a worker on each host given.
# Every host must have this repository, its .venv and the data/results folders at the same paths (a shared
# filesystem, e.g. NFS); see docs/cluster.md.
#
#   scripts/ray_ssh.sh start HOST1 HOST2 ...   # prints the address for -p cluster / --cluster
#   scripts/ray_ssh.sh stop HOST1 HOST2 ...
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
action=${1:?usage: scripts/ray_ssh.sh start|stop HOST...}
shift
port=${RAY_PORT:-6379}
head_ip=${RAY_HEAD_IP:-$(hostname --ip-address | awk '{print $1}')}
export RAY_USAGE_STATS_ENABLED=0

case "$action" in
  start)
    .venv/bin/ray start --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false
    for host in "$@"; do
      ssh "$host" "cd '$repo' && RAY_USAGE_STATS_ENABLED=0 .venv/bin/ray start --address='$head_ip:$port'"
    done
    echo "cluster: $head_ip:$port  (papermill ... -p cluster $head_ip:$port, or --cluster $head_ip:$port)"
    ;;
  stop)
    for host in "$@"; do ssh "$host" "cd '$repo' && .venv/bin/ray stop"; done
    .venv/bin/ray stop
    ;;
  *) echo "usage: scripts/ray_ssh.sh start|stop HOST..." >&2; exit 2 ;;
esac
