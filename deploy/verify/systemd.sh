#!/usr/bin/env bash
# The systemd units, for real, on Debian 12 (systemd 252) and Debian 13 (systemd 257):
# boot a fresh copy of each root file system from rootfs.sh with systemd-nspawn, run
# docs/operations.md's install block verbatim, then check socket activation, reload,
# the plugin directory audit, the watchdog, the start limit and its documented
# recovery, journal priorities, workers = 2, stop and `systemd-analyze security`.
# About 2 minutes per version (plus rootfs.sh the first time). Needs root,
# systemd-container and mmdebstrap. Idempotent: each run works on new copies under
# $WORK/machines.
#   VERSIONS="deb13"   only one of them
#   WHEEL=path.whl     install this wheel instead of one built from the tree (e.g. a prototype)
source "$(dirname "$0")/lib.sh"
MACHINES=${MACHINES:-/var/lib/machines}
VERSIONS=${VERSIONS:-deb12 deb13}
SVC=apisix-python-runner.service SOCK_UNIT=apisix-python-runner.socket
SOCK=/run/apisix-python-runner/runner.sock
BIN=/opt/apisix-runner/bin/apisix-python-runner
PY=/opt/apisix-runner/bin/python
PLUGINS=/etc/apisix-runner/plugins
PROBE=/usr/local/lib/a6-probe.py
SAY_OK="err=None action=stop status=201"

"$REPO/deploy/verify/rootfs.sh"
# The wheel, as the docs build it.
rm -rf "$WORK/dist" && mkdir -p "$WORK/dist"
if [ -n "${WHEEL:-}" ]; then cp "$WHEEL" "$WORK/dist/"; else
    (cd "$REPO" && python3 -m pip wheel --quiet --no-deps -w "$WORK/dist" . 2>/dev/null); fi
# The machines share the host's network: pip in them uses this mirror of the locked
# files (plus the setuptools pip builds a6pluginprotos with).
local_index setuptools wheel

# block NAME: the shell block after "<!-- verify: NAME -->" in docs/operations.md.
block() { awk -v m="<!-- verify: $1 -->" '$0==m{f=1;next} f&&/^```sh/{p=1;next} p&&/^```/{exit} p' "$REPO/docs/operations.md"; }

boot() {  # name: start a fresh copy, set LEADER (the machine's PID 1, as seen from here)
    local name=$1 dir=$WORK/machines/$1 old
    # A machine left running by an interrupted run: stop it by its recorded pid.
    # (Only if that pid is still this machine's nspawn: pids get reused.)
    old=$(cat "$WORK/$name.pid" 2>/dev/null || true)
    if [ -n "$old" ] && { tr '\0' ' ' < "/proc/$old/cmdline"; } 2>/dev/null | grep -q "^systemd-nspawn .*-D $dir "; then
        kill "$old"; timeout 30 tail --pid="$old" -f /dev/null || true
    fi
    rm -rf "$dir" && mkdir -p "$WORK/machines" && cp -a "$MACHINES/$name" "$dir"
    systemd-nspawn -b -D "$dir" --machine="$name" --register=no --keep-unit --console=passive \
        > "$WORK/$name-console.log" 2>&1 &
    NSPAWN=$!
    echo "$NSPAWN" > "$WORK/$name.pid"
    # nspawn's first child is a short-lived intermediate: wait for the one that runs systemd as PID 1.
    local _; for _ in $(seq 100); do
        LEADER=$(pgrep -P "$NSPAWN" | head -1) && [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
        sleep 0.1
    done
    m systemctl is-system-running --wait >/dev/null 2>&1 || true
}
m() { nsenter -t "$LEADER" -a /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
msh() { m bash -c "$1"; }
halt() { m systemctl poweroff >/dev/null 2>&1 || true; timeout 30 tail --pid="$NSPAWN" -f /dev/null || kill "$NSPAWN"; wait "$NSPAWN" 2>/dev/null || true; }
since() { m date +%s.%N; }
errs() { m journalctl -q --no-pager -p err --since="@$1" "${@:2}"; }  # since, journalctl args
mainpid() { m systemctl show -p MainPID --value "$SVC"; }
wait_until() { local _; for _ in $(seq "$1"); do msh "$2" && return 0; sleep 1; done; return 1; }
plugin() { m sh -c "cat > $PLUGINS/$1.py"; }  # name, code on stdin
dropin() { m mkdir -p "/etc/systemd/system/$SVC.d"; echo "$2" | m sh -c "cat > /etc/systemd/system/$SVC.d/$1.conf"; m systemctl daemon-reload; }
undrop() { m rm -f "/etc/systemd/system/$SVC.d/$1.conf"; m systemctl daemon-reload; }
call() { m runuser -u nobody -- $PY $PROBE $SOCK "$1" 2>&1 || true; }  # plugin: what APISIX would read
journal() { m journalctl -q --no-pager -u $SVC --since="@$1"; }  # since
# The docs' check command (it sees the files as the service does), stdout and stderr.
check_as_service() { m bash -c "$(block systemd-check)" 2>&1; }

for name in $VERSIONS; do
    boot "$name"
    version=$(m systemctl --version | head -1)
    echo "==== $name: $version"
    src=$WORK/machines/$name/root/src
    mkdir -p "$src" && cp -r "$REPO/deploy" "$REPO/plugins" "$REPO/docs" "$WORK/dist" "$src/"
    block systemd-install > "$src/install.sh"
    cp "$REPO/deploy/verify/probe.py" "$WORK/machines/$name$PROBE"

    # --- install, verbatim --------------------------------------------------------------
    if m bash -c "cd /root/src && PIP_INDEX_URL=$INDEX_URL bash -euo pipefail install.sh" > "$WORK/$name-install.log" 2>&1; then
        pass "$name: the documented install steps run verbatim"
    else
        fail "$name: the documented install steps (see $WORK/$name-install.log)"; tail -5 "$WORK/$name-install.log"
        halt; continue
    fi
    check "$name: socket and service active after enable --now" \
        test "$(m systemctl is-active $SOCK_UNIT $SVC | tr '\n' ' ')" = "active active "
    check "$name: no warnings from systemd-analyze verify" \
        test -z "$(m systemd-analyze verify /etc/systemd/system/$SVC /etc/systemd/system/$SOCK_UNIT 2>&1 | grep -v -i 'dbus\|bus_open\|Failed to connect')"
    check "$name: the socket is root:apisix 0660" test "$(m stat -c '%U:%G %a %F' $SOCK)" = "root:apisix 660 socket"
    check "$name: Documentation= names a file that is installed" \
        m test -f "$(m systemctl show -p Documentation --value $SVC | sed 's/^file://')"
    out=$(m runuser -u nobody -- $BIN health --socket $SOCK 2>&1) || true
    check "$name: health as nobody (group apisix) answers ok" test "$out" = ok
    out=$(m runuser -u daemon -- $BIN health --socket $SOCK 2>&1) || true
    check "$name: a user outside group apisix gets permission denied" contains "$out" "Permission denied"
    check "$name: an APISIX call through the socket (say: stop 201)" test "$(call say)" = "$SAY_OK"

    # --- socket activation ---------------------------------------------------------------
    m systemctl stop $SVC
    state=$(m systemctl is-active $SOCK_UNIT $SVC | tr '\n' ' ')
    out=$(m runuser -u nobody -- $BIN health --socket $SOCK 2>&1) || true
    check "$name: service stopped, socket kept ($state), a connection starts it and is answered" \
        test "$state|$out|$(m systemctl is-active $SVC)" = "active inactive |ok|active"

    # --- reload ----------------------------------------------------------------------------
    sed 's/class Say(/class Say2(/; s/name = "say"/name = "say2"/' "$REPO/plugins/say.py" | plugin say2
    t=$(since); m systemctl reload $SVC > "$WORK/$name-reload.log" 2>&1 && rc=0 || rc=$?
    out=$(call say2)
    check "$name: systemctl reload exits 0 and the new plugin serves at once (rc=$rc, say2: $out)" test "$rc:$out" = "0:$SAY_OK"
    [ "$rc:$out" = "0:$SAY_OK" ] || note "reload said: $(journal "$t" | tail -2 | tr '\n' ' ')"
    echo 'raise RuntimeError("broken on purpose")' | plugin broken
    t=$(since); m systemctl reload $SVC > /dev/null 2>&1 && rc=0 || rc=$?
    e=$(errs "$t" -u $SVC)
    check "$name: a failed reload makes systemctl reload exit 1, reason in -p err (rc=$rc)" \
        test "$rc:$(contains "$e" 'broken on purpose' && echo named)" = "1:named"
    check "$name: after the failed reload the old plugins still serve" test "$(call say)" = "$SAY_OK"
    m rm -f $PLUGINS/broken.py

    # --- the plugin directory audit ---------------------------------------------------------
    out=$(check_as_service) && rc=0 || rc=$?
    check "$name: the installed plugin directory (root's, 0755/0644) passes check as a DynamicUser (rc=$rc)" \
        contains "$rc:$out" "0:" "ok: $(( $(find "$REPO/plugins" -maxdepth 1 -name "*.py" | wc -l) + 1 )) plugin(s) from $PLUGINS"  # plugins/*.py and say2
    m chmod g+w $PLUGINS/say.py
    out=$(check_as_service) && rc=0 || rc=$?
    check "$name: a group-writable plugin file: check exits 1 naming it (rc=$rc)" \
        test "$rc:$(contains "$out" "$PLUGINS/say.py" "writable by its group" && echo named)" = "1:named"
    note "check said: $(echo "$out" | grep -m1 error | cut -c1-170)"
    t=$(since); m systemctl reload $SVC > /dev/null 2>&1 && rc=0 || rc=$?
    check "$name: ... systemctl reload refuses it too (rc=$rc), reason in -p err" \
        test "$rc:$(contains "$(errs "$t" -u $SVC)" "writable by its group" && echo named)" = "1:named"
    m chmod g-w $PLUGINS/say.py

    # --- errors reach journalctl -p err: runtime (text, json), check -----------------------
    printf 'from runner import Plugin\n\nclass Boom(Plugin):\n    name = "boom"\n\n    def filter(self, request, response):\n        raise RuntimeError("boom on purpose")\n' | plugin boom
    m systemctl restart $SVC
    t=$(since); m runuser -u nobody -- $PY $PROBE $SOCK boom > /dev/null 2>&1 || true; sleep 1
    check "$name: text format: a plugin exception is in journalctl -p err" contains "$(errs "$t" -u $SVC)" "boom on purpose"
    line=$(m journalctl -q --no-pager -o cat -u $SVC -n 200 | grep -m1 'serving on' || true)
    check "$name: text lines under journald carry no timestamp of their own: '${line:0:40}...'" \
        test -n "$line" -a "${line:0:2}" != "20"
    dropin json '[Service]
Environment=A6_RUNNER_LOG_FORMAT=json'
    m systemctl restart $SVC
    t=$(since); m runuser -u nobody -- $PY $PROBE $SOCK boom > /dev/null 2>&1 || true; sleep 1
    check "$name: json format: a plugin exception is in journalctl -p err" contains "$(errs "$t" -u $SVC)" "boom on purpose"
    note "json line: $(m journalctl -q --no-pager -o cat -u $SVC --since=@$t | grep -m1 boom | cut -c1-100)"
    undrop json; m systemctl restart $SVC

    echo 'raise RuntimeError("broken on purpose")' | plugin broken
    t=$(since); unit=a6-check-$RANDOM
    m systemd-run --quiet --unit=$unit --wait -p DynamicUser=yes $BIN check --config /etc/apisix-runner/runner.toml \
        > /dev/null 2>&1 && rc=0 || rc=$?
    check "$name: check exits non-zero on a broken plugin (rc=$rc)" test "$rc" != 0
    check "$name: check's error is in journalctl -p err" contains "$(errs "$t" -u $unit)" "broken on purpose"
    out=$(m systemd-run --quiet --pipe --wait -p DynamicUser=yes $BIN check --config /etc/apisix-runner/runner.toml 2>/dev/null) || true
    check "$name: check prints its error on stderr, not stdout" test -z "$(contains "$out" 'broken on purpose' && echo stdout)"

    # --- start limit with the broken plugin, and the documented recovery ------------------
    # Every start counts towards the limit, the restarts above too: start from zero.
    m systemctl reset-failed $SVC
    t=$(since); m systemctl restart $SVC > /dev/null 2>&1 && rc=0 || rc=$?
    wait_until 40 "systemctl is-failed -q $SOCK_UNIT" || true
    result=$(m systemctl show -p Result --value $SVC $SOCK_UNIT | tr '\n' ' ')
    log=$(m journalctl -q --no-pager --since=@$t)
    check "$name: broken plugin: start fails (rc=$rc), the start limit trips, the socket unit fails (results: $result)" \
        test "$rc:$(m systemctl is-failed $SOCK_UNIT):$(contains "$log" "repeated too quickly" && echo limit)" = "1:failed:limit"
    check "$name: ... and the socket file is gone" m test ! -e $SOCK
    e=$(errs "$t" -u $SVC)
    check "$name: ... and the reason is in journalctl -p err" contains "$e" "broken on purpose"
    note "$(echo "$e" | grep -m1 'broken on purpose' | cut -c1-160)"
    m rm -f $PLUGINS/broken.py
    block systemd-recover > "$src/recover.sh"
    if m bash -euo pipefail /root/src/recover.sh > "$WORK/$name-recover.log" 2>&1; then
        pass "$name: the documented recovery commands run"
    else fail "$name: the documented recovery (see $WORK/$name-recover.log)"; fi
    out=$(m runuser -u nobody -- $BIN health --socket $SOCK 2>&1) || true
    check "$name: after recovery both units are active and health is ok" \
        test "$(m systemctl is-active $SOCK_UNIT $SVC | tr '\n' ' ')|$out" = "active active |ok"

    # --- watchdog ---------------------------------------------------------------------------
    dropin watchdog '[Service]
WatchdogSec=3s'
    m systemctl restart $SVC
    old=$(mainpid); t=$(since); m kill -STOP "$old"
    wait_until 30 "p=\$(systemctl show -p MainPID --value $SVC); [ \$p != 0 ] && [ \$p != $old ] && systemctl is-active -q $SVC" || true
    new=$(mainpid)
    check "$name: watchdog: a hung runner is killed and restarted (pid $old -> $new)" \
        contains "$(m journalctl -q --no-pager -u $SVC --since=@$t)" "Watchdog timeout"
    check "$name: ... and the new runner serves" test "$new" != "$old" -a "$(m runuser -u nobody -- $BIN health --socket $SOCK 2>&1)" = ok
    undrop watchdog; m systemctl restart $SVC

    # --- workers = 2: a master and two workers on the socket unit's socket ----------------------
    m systemctl reset-failed $SVC  # the restarts above count towards the start limit
    echo "workers = 2" | m sh -c "cat >> /etc/apisix-runner/runner.toml"  # as the docs say
    m systemctl stop $SVC
    t=$(since); out=$(call say)  # socket activation starts it
    master=$(mainpid); workers=$(m ps -o pid= --ppid "$master" | xargs)
    check "$name: workers = 2: a connection starts a master and 2 workers ($workers) and is answered ($out)" \
        test "$(echo $workers | wc -w):$out:$(contains "$(journal "$t")" "with 2 worker processes" && echo logged)" = "2:$SAY_OK:logged"
    sed 's/class Say(/class Say3(/; s/name = "say"/name = "say3"/' "$REPO/plugins/say.py" | plugin say3
    t=$(since); m systemctl reload $SVC > /dev/null 2>&1 && rc=0 || rc=$?
    out=$(call say3)
    check "$name: workers = 2: systemctl reload exits 0, both workers switch, say3 serves (rc=$rc, $out)" \
        test "$rc:$out:$(contains "$(journal "$t")" "in 2 worker(s)" && echo both)" = "0:$SAY_OK:both"
    echo 'raise RuntimeError("broken on purpose")' | plugin broken
    t=$(since); m systemctl reload $SVC > /dev/null 2>&1 && rc=0 || rc=$?
    check "$name: workers = 2: a failed reload exits 1 (rc=$rc), reason in -p err, the old plugins serve" \
        test "$rc:$(contains "$(errs "$t" -u $SVC)" 'broken on purpose' && echo named):$(call say3)" = "1:named:$SAY_OK"
    m rm -f $PLUGINS/broken.py
    t=$(since); call boom > /dev/null; sleep 1
    e=$(errs "$t" -u $SVC)
    check "$name: workers = 2: a plugin exception in a worker is in -p err, naming the worker" contains "$e" "boom on purpose" "worker="
    note "$(echo "$e" | grep -m1 'boom on purpose' | cut -c1-170)"
    t=$(since); m systemctl stop $SVC
    alive=$(for p in $master $workers; do if m test -d "/proc/$p"; then echo "$p"; fi; done | tr '\n' ' ')
    log=$(journal "$t")
    check "$name: workers = 2: systemctl stop: master and workers gone (left: ${alive:-none}), none killed, socket kept" \
        test "$alive|$(contains "$log" "stopping on signal" && ! contains "$log" "did not stop in time" && echo clean)|$(m systemctl is-active $SOCK_UNIT)" = "|clean|active"
    m sed -i '/^workers = 2$/d' /etc/apisix-runner/runner.toml; m systemctl start $SVC

    # --- hardening, stop --------------------------------------------------------------------
    score=$(m systemd-analyze security --no-pager $SVC 2>&1 | grep -m1 'Overall exposure' || true)
    check "$name: systemd-analyze security: $score" contains "$score" "OK"
    t=$(since); m systemctl stop $SVC $SOCK_UNIT
    check "$name: stop: both inactive, socket removed, the runner logged its stop" \
        test "$(m systemctl is-active $SOCK_UNIT $SVC | tr '\n' ' ')|$(m test -e $SOCK && echo left)|$(m journalctl -q --no-pager -u $SVC --since=@$t | grep -c 'stopping on signal')" = "inactive inactive ||1"
    halt
done
summary
