#!/usr/bin/env bash
# The Kubernetes manifest against the API schemas of several versions (kubernetes-validate,
# strict: unknown fields are errors), and its Pod Security fields against the
# "restricted" level (tests/test_deploy.py). No cluster needed. About 1 minute
# (the first run installs kubernetes-validate into $WORK/kv).
#   K8S_VERSIONS="1.29.0 1.33.0"   the versions to validate against
source "$(dirname "$0")/lib.sh"
K8S_VERSIONS=${K8S_VERSIONS:-1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0}
MANIFEST=$REPO/deploy/kubernetes.yaml
[ -x "$WORK/kv/bin/kubernetes-validate" ] || { python3 -m venv "$WORK/kv" && "$WORK/kv/bin/pip" install --quiet kubernetes-validate==1.37.0 pyyaml; }
kv() { "$WORK/kv/bin/kubernetes-validate" --strict --quiet "$@"; }

for v in $K8S_VERSIONS; do
    check "kubernetes $v: every resource of deploy/kubernetes.yaml validates (strict)" kv -k "$v" "$MANIFEST"
done
note "1.28 accepts the native-sidecar field in its schema; without the SidecarContainers gate the API server drops it (docs/operations.md)"
# A validator that cannot fail proves nothing: an unknown field must be refused.
sed 's/restartPolicy: Always/restartPolicy: Always\n          sidecarMode: yes/' "$MANIFEST" > "$WORK/broken.yaml"
check "the validator refuses an unknown field" bash -c "! $WORK/kv/bin/kubernetes-validate --strict --quiet -k 1.33.0 $WORK/broken.yaml >/dev/null 2>&1"
check "restricted Pod Security fields, native sidecar, socket config, measured memory (pytest)" \
    bash -c "cd '$REPO' && '${PYTHON:-$REPO/.venv/bin/python}' -m pytest -q tests/test_deploy.py -k 'restricted or sidecar or socket or pulled or measured' >/dev/null"
summary
