#!/usr/bin/env bash
# The container image, for real: build the bases (deploy/image/build-base.sh), build
# the Dockerfile unchanged, then run it read-only as uid 65532 and check what
# docs/operations.md ("Docker") promises. Needs a running dockerd (with
# --iptables=false --bridge=none: every container here runs with --network none).
# About 5 minutes, 1.5 with SKIP_BASE=1. Idempotent.
#   SKIP_BASE=1   keep the base images already tagged
#   MIRROR=... SECURITY_MIRROR=...   passed to build-base.sh (default: its pinned snapshot)
source "$(dirname "$0")/lib.sh"
IMAGE=${IMAGE:-apisix-python-runner:verify}
BIN=/opt/apisix-runner/bin/apisix-python-runner
VOL=a6-verify
cd "$REPO"

cleanup() { docker rm -f a6-runner a6-socket a6-other >/dev/null 2>&1 || true; docker volume rm -f "$VOL" >/dev/null 2>&1 || true; }
cleanup

[ "${SKIP_BASE:-0}" = 1 ] || OUT=$WORK/base deploy/image/build-base.sh
local_index  # the build container may not reach PyPI; the lock's hashes still decide
docker build --network host --build-arg PIP_INDEX_URL="$INDEX_URL" -t "$IMAGE" . > "$WORK/build.log" 2>&1 \
    && pass "docker build of the unchanged Dockerfile" || { fail "docker build (see $WORK/build.log)"; summary; }

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_ref=$(sed -n 's/^ARG BASE=//p' Dockerfile)
base_size=$(docker image inspect -f '{{.Size}}' "$base_ref")
note "image $(( size / 1000000 )) MB, base $base_ref $(( base_size / 1000000 )) MB, runner layers $(( (size - base_size) / 1000 )) kB"
note "base rootfs tarball sha256 $(docker image inspect -f '{{index .Config.Labels "rootfs-tarball-sha256"}}' "$base_ref")"

# --- what the image is -----------------------------------------------------------------
cfg=$(docker image inspect -f '{{.Config.User}}|{{json .Config.Env}}|{{json .Config.Healthcheck}}' "$IMAGE")
check "USER 65532:65532" contains "$cfg" "65532:65532|"
check "socket and plugins in ENV" contains "$cfg" "APISIX_LISTEN_ADDRESS=unix:/run/a6/runner.sock" "A6_RUNNER_PLUGINS=/etc/apisix-runner/plugins"
check "HEALTHCHECK with a start period" contains "$cfg" '"StartPeriod":10000000000'
py() { docker run --rm --network none --entrypoint /opt/apisix-runner/bin/python "$IMAGE" -c "$1"; }
check "no pip, setuptools or ensurepip at run time" \
    py 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("pip", "setuptools", "ensurepip", "wheel")))'
check "no compiler, apt or pip executables" \
    docker run --rm --network none --entrypoint /bin/sh "$IMAGE" -c '! command -v gcc cc apt apt-get pip pip3 >/dev/null'
check "locked dependency versions installed" \
    py 'from importlib.metadata import version as v; assert (v("flatbuffers"), v("a6pluginprotos")) == ("25.12.19", "0.2.1")'

# --- defaults: check and health work without arguments ---------------------------------
out=$(docker run --rm --network none --read-only "$IMAGE" check 2>&1) && rc=0 || rc=$?
check "docker run IMAGE check: exit 0 with the example plugins" contains "$rc:$out" "0:" "ok: 6 plugin(s) from /etc/apisix-runner/plugins"
out=$(docker run --rm --network none --read-only "$IMAGE" health 2>&1) && rc=0 || rc=$?
check "docker run IMAGE health without a runner: exit 1" test "$rc" = 1

# --- read-only, non-root, named volume, health, APISIX's uid connects ------------------
docker run -d --name a6-runner --network none --read-only -v "$VOL:/run/a6" "$IMAGE" >/dev/null
sleep 3
pid=$(docker inspect -f '{{.State.Pid}}' a6-runner)
check "runner up as uid 65532 on a read-only root" \
    test "$(stat -c %u "/proc/$pid"):$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' a6-runner)" = "65532:true"
out=$(docker exec a6-runner $BIN health 2>&1) || true
check "docker exec health (the ENV socket)" test "$out" = ok
status=$(docker inspect -f '{{.State.Health.Status}}' a6-runner)
check "health is 'starting' during the start period" test "$status" = starting
# The first probe runs one interval (15 s) after the start.
for _ in $(seq 40); do probes=$(docker inspect -f '{{len .State.Health.Log}}' a6-runner); [ "$probes" = 0 ] || break; sleep 1; done
probe=$(docker inspect -f '{{with index .State.Health.Log 0}}{{.ExitCode}} {{.Output}}{{end}}' a6-runner)
expect R7 "HEALTHCHECK (health --pid 1) probe passes" test "$probe" = "0 ok"
note "first probe: exit code and output: $(echo "$probe" | tail -1)"
out=$(docker run --rm --network none --read-only --user 636:636 -v "$VOL:/run/a6" "$IMAGE" health 2>&1) || true
check "APISIX's uid 636 reaches the socket through the shared volume" test "$out" = ok

# --- docker stop drains and removes the socket ----------------------------------------
docker stop a6-runner >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' a6-runner)
check "docker stop: exit code 0" test "$code" = 0
check "docker stop: the log says it stopped on the signal" contains "$(docker logs a6-runner 2>&1)" "stopping on signal"
left=$(docker run --rm --network none -v "$VOL:/run/a6" --entrypoint /bin/ls "$IMAGE" -A /run/a6)
check "docker stop: the socket is gone from the volume" test -z "$left"
docker rm -f a6-runner >/dev/null

# --- the socket directory: what works, and what fails and how --------------------------
run_fg() { timeout 20 docker run --rm --network none --read-only "$@" 2>&1 | head -5 || true; }
out=$(run_fg --tmpfs /run/a6:uid=65532,gid=65532,mode=0755 "$IMAGE" run & sleep 4; docker ps -q --filter ancestor="$IMAGE" | xargs -r docker stop >/dev/null; wait)
check "--tmpfs /run/a6:uid=65532,gid=65532 works" contains "$out" "serving on /run/a6/runner.sock"

dir=$WORK/bind-root && rm -rf "$dir" && mkdir -m 0755 "$dir"
socket_dir_case() {  # what, docker args...: run refuses; the message and check must say why
    local what=$1; shift
    local out_run out_check
    out_run=$(run_fg "$@" "$IMAGE" run)
    out_check=$(run_fg "$@" "$IMAGE" check) && true
    check "$what: run refuses to start" contains "$out_run" "cannot start"
    expect R4 "$what: run's message names path, uid, owner and mode" contains "$out_run" "/run/a6" "uid 65532" "owner" "mode"
    expect R4 "$what: check fails too" contains "$out_check" "/run/a6" "uid 65532"
    note "run said: $(echo "$out_run" | tail -1)"
    note "check said: $(echo "$out_check" | head -1)"
}
socket_dir_case "default --tmpfs /run/a6 (root, 0755)" --tmpfs /run/a6
socket_dir_case "root-owned bind mount" -v "$dir:/run/a6"
chown 65532:65532 "$dir"
out=$(run_fg -v "$dir:/run/a6" "$IMAGE" run & sleep 4; docker ps -q --filter ancestor="$IMAGE" | xargs -r docker stop >/dev/null; wait)
check "bind mount chowned to 65532 works" contains "$out" "serving on /run/a6/runner.sock"
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
out_run=$(run_fg --user 1000:1000 -v "$VOL:/run/a6" "$IMAGE" run)
check "--user 1000 on a volume owned by 65532: run refuses" contains "$out_run" "cannot start"
expect R4 "--user 1000: the message names uid 1000, the owner 65532 and the mode" contains "$out_run" "uid 1000" "65532" "mode"
note "run said: $(echo "$out_run" | tail -1)"

# --- a 0660 socket for APISIX's group only (docs: --group-add 636 ...) ----------------
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
docker run -d --name a6-runner --network none --read-only --group-add 636 \
    -e A6_RUNNER_SOCKET_GROUP=636 -e A6_RUNNER_SOCKET_MODE=0660 -v "$VOL:/run/a6" "$IMAGE" >/dev/null
sleep 3
as() { docker run --rm --network none --read-only --user "$1" -v "$VOL:/run/a6" "$IMAGE" health 2>&1 || true; }
check "0660 socket of group 636: APISIX's 636:636 connects" test "$(as 636:636)" = ok
check "0660 socket of group 636: uid 1000 gets permission denied" contains "$(as 1000:1000)" "Permission denied"
docker rm -f a6-runner >/dev/null

# --- deploy/compose.yaml (the runner service; no APISIX image is needed for it) --------
if command -v docker-compose >/dev/null; then
    docker tag "$IMAGE" apisix-python-runner:0.1.0
    printf 'services:\n  runner:\n    network_mode: none\n' > "$WORK/compose.override.yaml"
    compose() { docker-compose -p a6verify -f deploy/compose.yaml -f "$WORK/compose.override.yaml" "$@"; }
    check "docker-compose config accepts deploy/compose.yaml" bash -c "docker-compose -f deploy/compose.yaml config -q"
    compose up -d runner >/dev/null 2>&1
    sleep 3
    out=$(compose exec -T runner $BIN health 2>&1) || true
    check "compose: the runner serves (health: $out)" test "$out" = ok
    mode=$(docker run --rm --network none -v a6verify_a6:/run/a6 --entrypoint /usr/bin/stat "$IMAGE" -c '%g %a' /run/a6/runner.sock 2>&1)
    check "compose: the socket is group 636, mode 0660 ($mode)" test "$mode" = "636 660"
    compose down -v >/dev/null 2>&1
else
    note "docker-compose not installed: deploy/compose.yaml not run"
fi

# --- stdin closed (docker run -i ... </dev/null) must not stop it ---------------------
# Attached (not -d): the client forwards the EOF of its /dev/null to the container's stdin.
docker run -i --name a6-other --network none --read-only "$IMAGE" </dev/null >/dev/null 2>&1 &
attached=$!
sleep 5
running=$(docker inspect -f '{{.State.Running}}' a6-other)
expect R6 "docker run -i with stdin closed keeps running (running=$running)" test "$running" = true
note "its log: $(docker logs a6-other 2>&1 | tail -1)"
docker rm -f a6-other >/dev/null; wait "$attached" || true

# --- check must refuse what run refuses: metrics_host = "::1" -------------------------
metrics=(-e A6_RUNNER_METRICS_PORT=9813 -e A6_RUNNER_METRICS_HOST=::1)
out_run=$(run_fg --tmpfs /run/a6:uid=65532,gid=65532 "${metrics[@]}" "$IMAGE" run & sleep 4; docker ps -q --filter ancestor="$IMAGE" | xargs -r docker stop >/dev/null; wait)
docker run --rm --network none --read-only "${metrics[@]}" "$IMAGE" check >/dev/null 2>&1 && rc=0 || rc=$?
started=no; contains "$out_run" "serving on" && started=yes
expect R8 "metrics_host ::1: check agrees with run (run started: $started, check exit $rc)" \
    test "$started:$rc" = "yes:0" -o "$started:$rc" = "no:1"
note "run said: $(echo "$out_run" | grep -m1 -i 'cannot\|error\|serving' | cut -c1-150)"

# --- a socket given with --socket: HEALTHCHECK must follow it --------------------------
docker run -d --name a6-socket --network none --read-only -v "$VOL:/run/a6" --user 65532 "$IMAGE" \
    run --socket /run/a6/other.sock >/dev/null
sleep 3
out=$(docker exec a6-socket $BIN health --pid 1 2>&1) && rc=0 || rc=$?
expect R7 "health --pid 1 probes the socket given with --socket" test "$rc:$out" = "0:ok"
note "health --pid 1 said: $(echo "$out" | tail -1)"
docker rm -f a6-socket >/dev/null

cleanup
summary
