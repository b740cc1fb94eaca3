#!/usr/bin/env bash
# The runner's memory in a 256 MiB container (docker run --memory 256m), the figures behind
# deploy/kubernetes.yaml's requests and limits: idle RSS with the example plugins and 64
# pooled connections; peak RSS while 12 calls at once each carry a 15 MiB body that the
# example verify_signature plugin reads (calls past memory_budget are dropped: APISIX
# answers 503); RSS 3 s later. The same with workers = 2 and memory_budget = 24MiB (the
# budget is per worker: docs/operations.md, "Memory"), per process. The load comes
# from memory.py in a second container that shares the runner's pid namespace (so it
# reads the runner's /proc) but not its memory limit. Uses the image image.sh built.
# About 2 minutes.
#   IMAGE=...   BODIES=12  SIZE=15728640 (bytes)  ROUNDS=3  IDLE=64  LIMIT=256m
#   RUNNER_ENV="A6_RUNNER_THREADS=64 ..."   more settings for every case
source "$(dirname "$0")/lib.sh"
IMAGE=${IMAGE:-apisix-python-runner:verify}
BODIES=${BODIES:-12} SIZE=${SIZE:-15728640} ROUNDS=${ROUNDS:-3} IDLE=${IDLE:-64}
LIMIT=${LIMIT:-256m} VOL=a6-memory
env_opts=(); for kv in ${RUNNER_ENV:-}; do env_opts+=(-e "$kv"); done
cleanup() { docker rm -f -v a6-memory >/dev/null 2>&1 || true; docker volume rm -f "$VOL" >/dev/null 2>&1 || true; }
cleanup
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }  # kB -> MiB

cgroup_file() {  # pid: the file of its memory cgroup that holds the highest use (v1 or v2)
    local cg dir f
    cg=$(awk -F: '$2 == "memory" || $2 == "" { print $3; exit }' "/proc/$1/cgroup")
    for dir in "/sys/fs/cgroup/memory$cg" "/sys/fs/cgroup$cg"; do
        for f in memory.max_usage_in_bytes memory.peak; do
            [ -n "$cg" ] && [ "$cg" != / ] && [ -r "$dir/$f" ] && { echo "$dir/$f"; return; }
        done
    done
    echo /dev/null
}

measure() {  # what, docker options for the runner...
    local what=$1; shift
    cleanup; docker volume create "$VOL" >/dev/null
    docker run -d --name a6-memory --network none --read-only --memory $LIMIT --memory-swap $LIMIT \
        -v "$VOL:/run/a6" "${env_opts[@]}" "$@" "$IMAGE" >/dev/null
    local _; for _ in $(seq 100); do docker logs a6-memory 2>&1 | grep -q "serving on" && break; sleep 0.2; done
    local peak_file; peak_file=$(cgroup_file "$(docker inspect -f '{{.State.Pid}}' a6-memory)")
    local out
    out=$(docker run --rm --network none --pid container:a6-memory -v "$VOL:/run/a6" -v "$REPO/deploy/verify:/verify:ro" \
        --entrypoint /opt/apisix-runner/bin/python "$IMAGE" /verify/memory.py /run/a6/runner.sock 1 \
        --idle "$IDLE" --bodies "$BODIES" --size "$SIZE" --rounds "$ROUNDS" 2>&1) || true
    local cgroup_peak=n/a  # gone with the container if it was killed
    [ -r "$peak_file" ] && cgroup_peak=$(awk '{ printf "%.1f MiB", $1 / 1048576 }' "$peak_file")
    echo "$out" | grep -v '^{' | sed "s/^/      $what: /"
    local json; json=$(echo "$out" | grep '^{' || echo '{"pids": []}')
    local state; state=$(docker inspect -f '{{.State.OOMKilled}} {{.State.Running}}' a6-memory)
    expect D3 "$what: not OOM-killed, still running (OOMKilled, Running: $state)" test "$state" = "false true"
    if [ "$(jq 'has("rounds")' <<< "$json")" = true ]; then
        rounds=$(jq -c .rounds <<< "$json")
        check "$what: every call was answered or dropped, nothing else ($rounds)" \
            test "$(jq -r --argjson n "$BODIES" '[.rounds[] | (.[0] + .[1] == $n and (.[2] | length) == 0)] | all' <<< "$json")" = true
        expect D4 "$what: every round answered at least one call" test "$(jq '[.rounds[] | .[0] > 0] | all' <<< "$json")" = true
    fi
    # Per process: idle, peak, after (MiB).
    local pid row
    for pid in $(jq -r '.pids[]' <<< "$json"); do
        row=$(jq -r --arg p "$pid" '[.idle_kb[$p], .peak_kb[$p], (.after_kb[$p] // "gone")] | @tsv' <<< "$json")
        read -r idle peak after <<< "$row"
        after_mib=gone; [ "$after" = gone ] || after_mib=$(mib "$after")
        TABLE+=("$what|$([ "$pid" = 1 ] && echo "PID 1" || echo "pid $pid")|$(mib "$idle")|$(mib "$peak")|$after_mib")
        expect D3 "$what, pid $pid: RSS after the bodies is within one body of idle ($after_mib vs $(mib "$idle") MiB idle)" \
            test "$after" != gone -a "$(( ${after/gone/0} - idle ))" -le $(( SIZE / 1024 ))
    done
    if [ "$(jq 'has("peak_total_kb")' <<< "$json")" = true ]; then
        TABLE+=("$what|sum|$(mib "$(jq '[.idle_kb[]] | add' <<< "$json")")|$(mib "$(jq .peak_total_kb <<< "$json")")|cgroup peak $cgroup_peak")
    else
        TABLE+=("$what|killed (OOMKilled, Running: $state) before the figures were taken||||")
    fi
    dropped=$(docker logs a6-memory 2>&1 | grep -c "past memory_budget" || true)
    note "$what: 'past memory_budget' warnings logged: $dropped"
    cleanup
}

TABLE=()
measure "workers = 1, defaults"
measure "workers = 2, memory_budget = 24MiB" -e A6_RUNNER_WORKERS=2 -e A6_RUNNER_MEMORY_BUDGET=24MiB
echo "      $IDLE idle connections, then $ROUNDS rounds of $BODIES concurrent calls with a $SIZE-byte body, limit $LIMIT:"
echo "      case | process | idle RSS MiB | peak RSS MiB | RSS 3 s after MiB"
for row in "${TABLE[@]}"; do echo "      $row"; done
summary
