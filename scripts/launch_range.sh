#!/usr/bin/env bash
# Run one stage command on machine ids A..B, one per host, over ssh (what the seed's users did
# by hand with tmux). Each host must see the repo at the same path and the same data paths.
#
#   usage: scripts/launch_range.sh HOSTFILE A B TOTAL -- COMMAND...
#   HOSTFILE: one host a line; machine id i runs on line (i - A + 1).
#   COMMAND is run in the repo folder with "--machine_id i --total_machine TOTAL" appended;
#   its output goes to logs/machine-i.log on that host. The script waits for all and
#   exits non-zero if any machine's command did (1: some records went to errors; 2: usage).
#
#   example:
#     scripts/launch_range.sh hosts.txt 0 7 8 -- .venv/bin/python pack.py --dataset webvid \
#         --manifest /data/webvid/results.csv --video_root /data/webvid --type kf --save_path /data/shards
#
#   SSH (default ssh), SSH_OPTS (default "-o BatchMode=yes") and REPO (default: this repo's
#   path) can be set.
set -uo pipefail
if [ $# -lt 6 ] || [ "$5" != "--" ]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
hostfile=$1 first=$2 last=$3 total=$4
shift 5
repo=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
ssh_bin=${SSH:-ssh}
ssh_opts=${SSH_OPTS:--o BatchMode=yes}
mapfile -t hosts < <(grep -v '^\s*\(#\|$\)' "$hostfile")
count=$((last - first + 1))
if [ "${#hosts[@]}" -lt "$count" ]; then
  echo "launch_range.sh: $hostfile has ${#hosts[@]} hosts, machine ids $first..$last need $count" >&2
  exit 2
fi
cmd=$(printf '%q ' "$@")
pids=()
for ((i = first; i <= last; i++)); do
  host=${hosts[$((i - first))]}
  remote="cd $(printf '%q' "$repo") && mkdir -p logs && $cmd --machine_id $i --total_machine $total > logs/machine-$i.log 2>&1"
  echo "machine $i -> $host"
  # shellcheck disable=SC2086
  "$ssh_bin" $ssh_opts "$host" "$remote" &
  pids+=($!)
done
status=0
for ((j = 0; j < ${#pids[@]}; j++)); do
  wait "${pids[$j]}"
  rc=$?
  echo "machine $((first + j)) exit $rc"
  [ "$rc" -gt "$status" ] && status=$rc
done
exit "$status"
