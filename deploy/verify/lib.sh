# Shared by the verify scripts: result bookkeeping and a local PyPI mirror.
# Every check ends in one line:
#   PASS  what was verified
#   FAIL  what the deployment files (or the runner behaviour they rely on) get wrong (the script exits 1)
#   RUNNER Dn  what fails because of the known runner defect Dn of
#              deploy/verify/README.md (exit 0 unless STRICT=1)
# shellcheck shell=bash
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${WORK:-/tmp/apisix-python-runner-verify}
mkdir -p "$WORK"
_fails=0 _runner=0

pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; _fails=$((_fails + 1)); }
runner_side() { local req=$1; shift; echo "RUNNER $req  $*"; _runner=$((_runner + 1)); }
note() { echo "      $*"; }

# check "what" CMD...: PASS if CMD succeeds, FAIL otherwise.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# expect Dn "what" CMD...: PASS if CMD succeeds, RUNNER Dn otherwise.
expect() { local req=$1 what=$2; shift 2; if "$@"; then pass "$what"; else runner_side "$req" "$what"; fi; }
# contains TEXT NEEDLE...: every NEEDLE occurs in TEXT.
contains() { local text=$1; shift; local n; for n in "$@"; do [[ $text == *"$n"* ]] || return 1; done; }

summary() {
    echo "---- $(basename "$0"): $_fails deployment failure(s), $_runner runner-side failure(s)"
    [ "$_fails" -eq 0 ] || exit 1
    [ "${STRICT:-0}" = 1 ] && [ "$_runner" -gt 0 ] && exit 1
    exit 0
}

# A PEP 503 index on 127.0.0.1 holding exactly the locked files (fetched with the
# host's pip, so its proxy and CA settings apply). For builds where the container
# cannot reach PyPI itself; the hashes in the lock still decide what is accepted.
# Extra names (unpinned: what pip's build isolation fetches) are added as given.
# Sets INDEX_URL; the server stops with the calling script (call it in that shell, not in $(...)).
local_index() {
    local dir=$WORK/index port=${INDEX_PORT:-8731}
    rm -rf "$dir" && mkdir -p "$dir/files"
    pip download --quiet --no-deps --require-hashes -r "$REPO/deploy/requirements.lock" -d "$dir/files" 2>/dev/null
    [ $# = 0 ] || pip download --quiet --no-deps -d "$dir/files" "$@" 2>/dev/null
    local f name
    for f in "$dir"/files/*; do
        name=$(basename "$f" | sed -E 's/-[0-9].*//; s/[-_.]+/-/g' | tr A-Z a-z)
        mkdir -p "$dir/simple/$name"
        echo "<a href=\"../../files/$(basename "$f")#sha256=$(sha256sum "$f" | cut -d' ' -f1)\">$(basename "$f")</a>" \
            >> "$dir/simple/$name/index.html"
    done
    python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$port" >/dev/null 2>&1 &
    _index_pid=$!
    trap 'kill $_index_pid 2>/dev/null || true' EXIT
    INDEX_URL=http://127.0.0.1:$port/simple
    local _; for _ in $(seq 50); do curl -sf "$INDEX_URL/" -o /dev/null && return; sleep 0.1; done
}
