#!/usr/bin/env bash
# The container image, for real: build the bases (deploy/image/build-base.sh), build
# the Dockerfile unchanged, then run it read-only as uid 65532 and check what
# docs/operations.md ("Docker") promises. Needs a running dockerd (with
# --iptables=false --bridge=none: every container here runs with --network none).
# About 6 minutes, 3 with SKIP_BASE=1. Idempotent.
#   SKIP_BASE=1   keep the base images already tagged
#   MIRROR=... SECURITY_MIRROR=...   passed to build-base.sh (default: its pinned snapshot)
source "$(dirname "$0")/lib.sh"
# The example plugins the image ships (plugins/*.py): the counts below follow them.
NPLUGINS=$(find "$REPO/plugins" -maxdepth 1 -name "*.py" | wc -l)
IMAGE=${IMAGE:-apisix-python-runner:verify}
BIN=/opt/apisix-runner/bin/apisix-python-runner
VOL=a6-verify
NAMES=(a6-runner a6-plugins a6-socket a6-other a6-hold a6-busy a6-workers)
cd "$REPO"

cleanup() { docker rm -f -v "${NAMES[@]}" >/dev/null 2>&1 || true; docker volume rm -f "$VOL" >/dev/null 2>&1 || true; }
cleanup

[ "${SKIP_BASE:-0}" = 1 ] || OUT=$WORK/base deploy/image/build-base.sh
local_index  # the build container may not reach PyPI; the lock's hashes still decide
build() { docker build --network host --build-arg PIP_INDEX_URL="$INDEX_URL" "$@" > "$WORK/build.log" 2>&1; }
build -t "$IMAGE" . && pass "docker build of the unchanged Dockerfile" || { fail "docker build (see $WORK/build.log)"; summary; }

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_ref=$(sed -n 's/^ARG BASE=//p' Dockerfile)
base_size=$(docker image inspect -f '{{.Size}}' "$base_ref")
note "image $(( size / 1000000 )) MB, base $base_ref $(( base_size / 1000000 )) MB, runner layers $(( (size - base_size) / 1000 )) kB"
note "base rootfs tarball sha256 $(docker image inspect -f '{{index .Config.Labels "rootfs-tarball-sha256"}}' "$base_ref")"

# docker run with the image's defaults, no network; "$@" are options, then the image and its arguments.
dr() { docker run --rm --network none "$@"; }
# An APISIX call (PrepareConf + HTTPReqCall naming PLUGIN) through the socket on volume VOL.
probe() { dr --read-only -v "$1:/run/a6" -v "$REPO/deploy/verify:/verify:ro" --entrypoint /opt/apisix-runner/bin/python \
    "$IMAGE" /verify/probe.py /run/a6/runner.sock "$2" 2>&1 || true; }
SAY_OK="err=None action=stop status=201"
# Wait until container NAME's log has TEXT (at most 20 s).
logged() { local _; for _ in $(seq 100); do docker logs "$1" 2>&1 | grep -q -- "$2" && return 0; sleep 0.2; done; return 1; }
ms() { date +%s%3N; }

# --- what the image is -----------------------------------------------------------------
cfg=$(docker image inspect -f '{{.Config.User}}|{{json .Config.Env}}|{{json .Config.Healthcheck}}' "$IMAGE")
check "USER 65532:65532" contains "$cfg" "65532:65532|"
check "socket and plugins in ENV" contains "$cfg" "APISIX_LISTEN_ADDRESS=unix:/run/a6/runner.sock" "A6_RUNNER_PLUGINS=/etc/apisix-runner/plugins"
check "HEALTHCHECK with a start period" contains "$cfg" '"StartPeriod":10000000000'
py() { dr --entrypoint /opt/apisix-runner/bin/python "$IMAGE" -c "$1"; }
check "no pip, setuptools or ensurepip at run time" \
    py 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("pip", "setuptools", "ensurepip", "wheel")))'
check "no compiler, apt or pip executables" \
    dr --entrypoint /bin/sh "$IMAGE" -c '! command -v gcc cc apt apt-get pip pip3 >/dev/null'
check "locked dependency versions installed" \
    py 'from importlib.metadata import version as v; assert (v("flatbuffers"), v("a6pluginprotos")) == ("25.12.19", "0.2.1")'
modes=$(dr --entrypoint /usr/bin/find "$IMAGE" /etc/apisix-runner/plugins '(' -perm /022 -o ! -user 0 ')' -printf '%p %m %u\n')
check "the image's plugins are root's and writable by root only" test -z "$modes"
# A checkout made with umask 002 has group-writable files: the image must not keep those modes.
ctx=$WORK/context-umask002 && rm -rf "$ctx" && mkdir -p "$ctx/deploy"
cp -r Dockerfile .dockerignore pyproject.toml README.md runner plugins "$ctx/" && cp deploy/requirements.lock "$ctx/deploy/"
chmod -R g+w "$ctx/plugins"
if build -t "$IMAGE-umask002" "$ctx"; then
    out=$(dr "$IMAGE-umask002" check 2>&1) && rc=0 || rc=$?
    check "built from a group-writable checkout, check passes on a writable root (rc=$rc)" test "$rc" = 0
    [ "$rc" = 0 ] || note "$(echo "$out" | grep -m1 error)"
    docker rmi "$IMAGE-umask002" >/dev/null
else fail "docker build from a group-writable checkout (see $WORK/build.log)"; fi

# --- defaults: check and health work without arguments ---------------------------------
out=$(dr --read-only "$IMAGE" check 2>&1) && rc=0 || rc=$?
check "docker run IMAGE check: exit 0 with the example plugins" contains "$rc:$out" "0:" "ok: $NPLUGINS plugin(s) from /etc/apisix-runner/plugins"
out=$(dr "$IMAGE" check 2>&1) && rc=0 || rc=$?
check "... also without --read-only (the plugin directory audit: root's files, mode 0644)" test "$rc" = 0
out=$(dr --read-only "$IMAGE" health 2>&1) && rc=0 || rc=$?
check "docker run IMAGE health without a runner: exit 1" test "$rc" = 1

# --- read-only, non-root, named volume, health, reload, APISIX's uid connects -----------
docker run -d --name a6-runner --network none --read-only -v "$VOL:/run/a6" "$IMAGE" >/dev/null
logged a6-runner "serving on" || true
pid=$(docker inspect -f '{{.State.Pid}}' a6-runner)
check "runner up as uid 65532 on a read-only root" \
    test "$(stat -c %u "/proc/$pid"):$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' a6-runner)" = "65532:true"
out=$(docker exec a6-runner $BIN health 2>&1) || true
check "docker exec health (the ENV socket)" test "$out" = ok
status=$(docker inspect -f '{{.State.Health.Status}}' a6-runner)
check "health is 'starting' during the start period" test "$status" = starting
# The first probe runs one interval (15 s) after the start.
for _ in $(seq 45); do status=$(docker inspect -f '{{.State.Health.Status}}' a6-runner); [ "$status" = starting ] || break; sleep 1; done
probe=$(docker inspect -f '{{with index .State.Health.Log 0}}{{.ExitCode}} {{.Output}}{{end}}' a6-runner)
check "HEALTHCHECK (health --pid 1) turns the container healthy (status $status, first probe: $(echo $probe))" \
    test "$status:$probe" = "healthy:0 ok"
out=$(dr --read-only --user 636:636 -v "$VOL:/run/a6" "$IMAGE" health 2>&1) || true
check "APISIX's uid 636 reaches the socket through the shared volume" test "$out" = ok
out=$(docker exec a6-runner $BIN reload --pid 1 2>&1) && rc=0 || rc=$?
check "docker exec reload --pid 1: exit 0 ($out)" contains "$rc:$out" "0:ok: reloaded $NPLUGINS plugin(s)"
out=$(docker exec a6-runner $BIN reload --pid 4242 2>&1) && rc=0 || rc=$?
check "reload --pid of no runner: exit 2 ($out)" test "$rc" = 2

# --- docker stop drains and removes the socket ----------------------------------------
t=$(ms); docker stop a6-runner >/dev/null; took=$(( $(ms) - t ))
code=$(docker inspect -f '{{.State.ExitCode}}' a6-runner)
check "docker stop: exit code 0, in $took ms" test "$code" = 0 -a "$took" -lt 1000
check "docker stop: the log says it stopped on the signal" contains "$(docker logs a6-runner 2>&1)" "stopping on signal"
left=$(dr -v "$VOL:/run/a6" --entrypoint /bin/ls "$IMAGE" -A /run/a6)
check "docker stop: the socket is gone from the volume" test -z "$left"
docker rm -f -v a6-runner >/dev/null

# --- plugins from a host directory (docs: -v "$PWD/plugins:/etc/apisix-runner/plugins:ro") --
plugins=$WORK/plugins && rm -rf "$plugins" && mkdir -m 0755 "$plugins" && install -m 0644 plugins/*.py "$plugins/"
printf 'import time\n\nfrom runner import Plugin\n\n\nclass Sleepy(Plugin):\n    name = "sleepy"\n\n    def filter(self, request, response):\n        time.sleep(5)\n' \
    > "$plugins/sleepy.py"
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
docker run -d --name a6-plugins --network none --read-only -v "$VOL:/run/a6" -v "$plugins:/etc/apisix-runner/plugins:ro" "$IMAGE" >/dev/null
logged a6-plugins "serving on" || true
check "host plugin directory mounted :ro: the runner serves its $((NPLUGINS + 1)) plugins" contains "$(docker logs a6-plugins 2>&1)" "serving on /run/a6/runner.sock with $((NPLUGINS + 1)) plugin(s)"
echo 'raise RuntimeError("broken on purpose")' > "$plugins/broken.py"
out=$(docker exec a6-plugins $BIN reload --pid 1 2>&1) && rc=0 || rc=$?
check "a broken plugin: docker exec reload --pid 1 exits 1 naming the file and the exception (rc=$rc)" \
    test "$rc" = 1 -a -n "$(contains "$out" broken.py "broken on purpose" && echo named)"
note "reload said: ${out:0:150}"
check "... the reason is in docker logs at ERROR" bash -c "docker logs a6-plugins 2>&1 | grep ERROR | grep -q 'broken on purpose'"
check "... and the old plugins still serve" test "$(probe "$VOL" say)" = "$SAY_OK"
rm "$plugins/broken.py"
sed 's/class Say(/class Say2(/; s/name = "say"/name = "say2"/' plugins/say.py > "$plugins/say2.py"
out=$(docker exec a6-plugins $BIN reload --pid 1 2>&1) && rc=0 || rc=$?
check "fixed: reload exits 0 and the new plugin serves at once (rc=$rc)" test "$rc:$(probe "$VOL" say2)" = "0:$SAY_OK"

# --- SIGTERM: out within 1 s (APISIX's SIGKILL comes 1 s after its SIGTERM) -------------
hold='import sys, time
from runner.testing import ApisixClient
clients = [ApisixClient(sys.argv[1]) for _ in range(16)]
for c in clients:
    c.http_req_call(c.prepare_conf([("say", "{}")]))
print("holding", flush=True)
time.sleep(60)'
docker run -d --name a6-hold --network none -v "$VOL:/run/a6" --entrypoint /opt/apisix-runner/bin/python "$IMAGE" \
    -c "$hold" /run/a6/runner.sock >/dev/null
docker run -d --name a6-busy --network none -v "$VOL:/run/a6" -v "$REPO/deploy/verify:/verify:ro" \
    --entrypoint /opt/apisix-runner/bin/python "$IMAGE" /verify/probe.py /run/a6/runner.sock sleepy >/dev/null
logged a6-hold holding || true
logged a6-plugins "slow after .* in plugin 'sleepy'" || true  # the call is in its plugin
# SIGTERM straight to the runner, as APISIX sends it; the time until the process is gone.
pid=$(docker inspect -f '{{.State.Pid}}' a6-plugins)
t=$(ms); kill -TERM "$pid"; while [ -d "/proc/$pid" ]; do sleep 0.01; done; took=$(( $(ms) - t ))
code=$(docker wait a6-plugins)
log=$(docker logs a6-plugins 2>&1)
check "SIGTERM with 16 idle connections and a call in a plugin: exit $code in $took ms (< 1000)" test "$code" = 0 -a "$took" -lt 1000
check "... the log says one call was left after drain_timeout" contains "$log" "exiting with 1 connection(s) still busy after 0.7 s"
docker rm -f -v a6-plugins a6-hold a6-busy >/dev/null

# --- a Kubernetes ConfigMap volume: the kubelet's layout, read-only ----------------------
# ..<timestamp>/ holds the files, ..data links to it, each key links into ..data; root's,
# group fsGroup (636), files 0644 (defaultMode's default).
cm=$WORK/configmap && rm -rf "$cm" && stamp=..2026_12_01_00_00_00.000000001 && mkdir -p "$cm/$stamp"
cp plugins/*.py "$cm/$stamp/" && ln -s "$stamp" "$cm/..data"
for f in plugins/*.py; do ln -s "..data/$(basename "$f")" "$cm/$(basename "$f")"; done
chown -R 0:636 "$cm" && chmod 2755 "$cm" "$cm/$stamp" && chmod 0644 "$cm/$stamp"/*.py
cm_check() { dr -v "$cm:/etc/apisix-runner/plugins$1" "$IMAGE" check 2>&1; }  # ":ro" or ""
out=$(cm_check :ro) && rc=0 || rc=$?
check "ConfigMap layout mounted read-only: check passes, $NPLUGINS plugins, each once (rc=$rc)" contains "$rc:$out" "0:" "ok: $NPLUGINS plugin(s)"
out=$(cm_check "") && rc=0 || rc=$?
check "... mounted read-write it passes too: its owners and modes are safe by themselves (rc=$rc)" test "$rc" = 0
chmod 0664 "$cm/$stamp"/*.py  # defaultMode: 0664
out=$(cm_check :ro) && rc=0 || rc=$?
check "files 0664 (defaultMode: 0664) mounted read-only are refused: group-writable, read-only or not (rc=$rc)" \
    test "$rc" = 1 -a -n "$(contains "$out" "mode 0664" "writable by its group" && echo named)"
out=$(cm_check "") && rc=0 || rc=$?
check "... and mounted read-write (rc=$rc)" \
    test "$rc" = 1 -a -n "$(contains "$out" "mode 0664" "writable by its group" && echo named)"
note "check said: $(echo "$out" | grep -m1 error | cut -c1-170)"

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
    check "$what: run's message names path, uid, owner and mode" contains "$out_run" "/run/a6" "uid 65532" "owner" "mode"
    check "$what: check fails too" contains "$out_check" "/run/a6" "uid 65532"
    note "run said: $(echo "$out_run" | tail -1)"
}
socket_dir_case "default --tmpfs /run/a6 (root, 0755)" --tmpfs /run/a6
socket_dir_case "root-owned bind mount" -v "$dir:/run/a6"
chown 65532:65532 "$dir"
out=$(run_fg -v "$dir:/run/a6" "$IMAGE" run & sleep 4; docker ps -q --filter ancestor="$IMAGE" | xargs -r docker stop >/dev/null; wait)
check "bind mount chowned to 65532 works" contains "$out" "serving on /run/a6/runner.sock"
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
out_run=$(run_fg --user 1000:1000 -v "$VOL:/run/a6" "$IMAGE" run)
check "--user 1000 on a volume owned by 65532: run refuses" contains "$out_run" "cannot start"
check "--user 1000: the message names uid 1000, the owner 65532 and the mode" contains "$out_run" "uid 1000" "65532" "mode"

# --- who may connect: a 0660 socket for APISIX's group, or peer credentials -------------
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
as() { dr --read-only --user "$1" -v "$VOL:/run/a6" "$IMAGE" health 2>&1 || true; }
docker run -d --name a6-runner --network none --read-only --group-add 636 \
    -e A6_RUNNER_SOCKET_GROUP=636 -e A6_RUNNER_SOCKET_MODE=0660 -v "$VOL:/run/a6" "$IMAGE" >/dev/null
logged a6-runner "serving on" || true
check "0660 socket of group 636: APISIX's 636:636 connects" test "$(as 636:636)" = ok
check "0660 socket of group 636: uid 1000 gets permission denied" contains "$(as 1000:1000)" "Permission denied"
docker rm -f -v a6-runner >/dev/null
docker run -d --name a6-runner --network none --read-only -e A6_RUNNER_ALLOWED_UIDS=636 -v "$VOL:/run/a6" "$IMAGE" >/dev/null
logged a6-runner "serving on" || true
check "allowed_uids 636 (socket 0766): 636 is answered" test "$(as 636:636)" = ok
check "allowed_uids: the HEALTHCHECK's uid 65532 (the runner's own, not listed) is answered" test "$(docker exec a6-runner $BIN health --pid 1 2>&1)" = ok
out=$(as 1000:1000)
check "allowed_uids: uid 1000 is refused, and the runner logs who ($out)" test "$out" != ok -a \
    -n "$(docker logs a6-runner 2>&1 | grep 'refusing a connection' | grep -q 'uid 1000' && echo logged)"
docker rm -f -v a6-runner >/dev/null

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
    mode=$(dr -v a6verify_a6:/run/a6 --entrypoint /usr/bin/stat "$IMAGE" -c '%g %a' /run/a6/runner.sock 2>&1)
    check "compose: the socket is group 636, mode 0660 ($mode)" test "$mode" = "636 660"
    compose down -v >/dev/null 2>&1
else
    note "docker-compose not installed: deploy/compose.yaml not run"
fi

# --- stdin closed (docker run -i ... </dev/null) must not stop it ---------------------
# Attached (not -d): the client forwards the EOF of its /dev/null to the container's stdin.
stdin_case() {  # req what, docker options...
    local req=$1 what=$2; shift 2
    docker run -i --name a6-other --network none --read-only "$@" "$IMAGE" </dev/null >/dev/null 2>&1 &
    local attached=$!
    sleep 5
    local running; running=$(docker inspect -f '{{.State.Running}}' a6-other)
    if [ "$req" = - ]; then check "$what with stdin closed keeps running (running=$running)" test "$running" = true
    else expect "$req" "$what with stdin closed keeps running (running=$running)" test "$running" = true; fi
    [ "$running" = true ] || note "its log: $(docker logs a6-other 2>&1 | tail -1)"
    docker rm -f -v a6-other >/dev/null; wait "$attached" || true
}
stdin_case - "docker run -i (the runner is PID 1)"
stdin_case - "docker run --init -i" --init
stdin_case - "docker run --init -i -e APISIX_CONF_EXPIRE_TIME=600" --init -e APISIX_CONF_EXPIRE_TIME=600

# --- metrics_host = "::1": check agrees with run, both ways -----------------------------
metrics_case() {  # what, docker options...
    local what=$1; shift
    local opts=(--tmpfs /run/a6:uid=65532,gid=65532 -e A6_RUNNER_METRICS_PORT=9813 -e A6_RUNNER_METRICS_HOST=::1 "$@")
    docker run -d --name a6-other --network none --read-only "${opts[@]}" "$IMAGE" >/dev/null
    sleep 3
    local log running rc scrape=""
    log=$(docker logs a6-other 2>&1); running=$(docker inspect -f '{{.State.Running}}' a6-other)
    [ "$running" = true ] && scrape=$(docker exec a6-other /opt/apisix-runner/bin/python -c \
        'import urllib.request as u; print(u.urlopen("http://[::1]:9813/metrics", timeout=2).status)' 2>&1)
    dr --read-only "${opts[@]}" "$IMAGE" check >/dev/null 2>&1 && rc=0 || rc=$?
    if [ "$running" = true ]; then
        check "$what: run serves /metrics on [::1]:9813 (HTTP $scrape) and check exits 0 (rc=$rc)" test "$scrape:$rc" = "200:0"
    else
        check "$what: run refuses and check exits 1 (rc=$rc)" test "$rc" = 1
        check "$what: ... run says why in one 'cannot start' line, no traceback" \
            test -n "$(contains "$log" "cannot start" && ! contains "$log" Traceback && echo clean)"
        note "run said: $(echo "$log" | tail -1 | cut -c1-150)"
    fi
    docker rm -f -v a6-other >/dev/null
}
metrics_case "metrics_host ::1, IPv6 on lo" --sysctl net.ipv6.conf.lo.disable_ipv6=0
metrics_case "metrics_host ::1, no IPv6 (Docker's default without an IPv6 network)"

# --- a socket given with --socket: HEALTHCHECK must follow it --------------------------
docker run -d --name a6-socket --network none --read-only -v "$VOL:/run/a6" --user 65532 "$IMAGE" \
    run --socket /run/a6/other.sock >/dev/null
logged a6-socket "serving on" || true
out=$(docker exec a6-socket $BIN health --pid 1 2>&1) && rc=0 || rc=$?
check "health --pid 1 probes the socket given with --socket ($out)" test "$rc:$out" = "0:ok"
docker rm -f -v a6-socket >/dev/null

# --- workers = 2: a master (PID 1) and two worker processes ----------------------------
docker volume rm -f "$VOL" >/dev/null; docker volume create "$VOL" >/dev/null
docker run -d --name a6-workers --network none --read-only -e A6_RUNNER_WORKERS=2 -v "$VOL:/run/a6" "$IMAGE" >/dev/null
logged a6-workers "serving on /run/a6/runner.sock with 2 worker processes" || true
pid=$(docker inspect -f '{{.State.Pid}}' a6-workers)
kids=$(wc -w < "/proc/$pid/task/$pid/children")
check "workers = 2: PID 1 has 2 worker processes" test "$kids" = 2
check "workers = 2: health --pid 1 and an APISIX call are answered" \
    test "$(docker exec a6-workers $BIN health --pid 1 2>&1)|$(probe "$VOL" say)" = "ok|$SAY_OK"
out=$(docker exec a6-workers $BIN reload --pid 1 2>&1) && rc=0 || rc=$?
check "workers = 2: docker exec reload --pid 1 reloads both ($out)" contains "$rc:$out" "0:ok:" "in 2 worker(s)"
t=$(ms); docker stop a6-workers >/dev/null; took=$(( $(ms) - t ))
log=$(docker logs a6-workers 2>&1)
check "workers = 2: docker stop: exit $(docker inspect -f '{{.State.ExitCode}}' a6-workers) in $took ms, no worker killed" \
    test "$(docker inspect -f '{{.State.ExitCode}}' a6-workers):$(contains "$log" "did not stop in time" && echo killed)" = "0:" -a "$took" -lt 1000
docker rm -f -v a6-workers >/dev/null

cleanup
summary
