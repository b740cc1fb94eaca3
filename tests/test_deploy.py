"""The deployment files promise what docs/operations.md says, checked without root or a daemon.

deploy/verify/ runs them for real (Docker, systemd-nspawn machines); these tests
pin the parts a reviewer would otherwise check by eye: unit directives, the
Dockerfile's defaults, the lock's hashes, the manifest's Pod Security fields.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs" / "operations.md"
RUNNER_BIN = "/opt/apisix-runner/bin/apisix-python-runner"


# --- readers ----------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values in order]}}, as systemd parses it."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=Value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def assert_set(unit: dict[str, dict[str, list[str]]], section: str, **expected: str) -> None:
    """Each ``key=value`` is set once in ``section`` of ``unit``, to that value."""
    assert {key: one(unit, section, key) for key in expected} == expected


def docs_block(name: str) -> str:
    """The shell block after ``<!-- verify: NAME -->``, which deploy/verify/systemd.sh runs verbatim."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- verify: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"docs/operations.md has no verify block {name!r}"
    return match.group(1)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, continuation lines joined, one list per stage (ARGs before FROM first)."""
    stages: list[list[tuple[str, str]]] = [[]]
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), " ".join(rest.split())))
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in stage:
        if op == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest))
    return env


def manifest() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if doc]


def kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = kind(docs, "Deployment", "apisix")["spec"]["template"]["spec"]
    return spec


# --- systemd units ----------------------------------------------------------------------

SERVICE = read_unit(DEPLOY / "apisix-python-runner.service")
SOCKET = read_unit(DEPLOY / "apisix-python-runner.socket")

# Directives and values that systemd 252 (Debian 12, RHEL 9) does not know: the one
# unit must work there too.
NEWER_THAN_252 = {
    ("Service", "Type"): {"notify-reload"},  # 253
    ("Service", "RestartSteps"): None,  # 254
    ("Service", "RestartMaxDelaySec"): None,  # 254
    ("Service", "RestartMode"): None,  # 254
    ("Service", "OpenFile"): None,  # 253
    ("Service", "SurviveFinalKillSignal"): None,  # 255
    ("Service", "MemoryKSM"): None,  # 254
    ("Service", "PrivatePIDs"): None,  # 257
}


def test_service_uses_nothing_newer_than_systemd_252() -> None:
    for (section, key), values in NEWER_THAN_252.items():
        present = SERVICE.get(section, {}).get(key, [])
        assert not (present if values is None else set(present) & values), f"{key}={present} needs systemd > 252"


def test_service_is_type_notify_and_reload_waits_for_the_outcome() -> None:
    assert_set(SERVICE, "Service", Type="notify", NotifyAccess="main", ExecReload=f"{RUNNER_BIN} reload --pid $MAINPID")


def test_service_runs_without_a_pre_start_check() -> None:
    # run validates settings and plugins itself; a pre-start check would import every plugin twice.
    assert "ExecStartPre" not in SERVICE["Service"]
    assert one(SERVICE, "Service", "ExecStart") == f"{RUNNER_BIN} run --config /etc/apisix-runner/runner.toml"


def test_service_restarts_with_a_start_limit_in_the_unit_section() -> None:
    # In [Service] these names are ignored by systemd >= 230: they belong in [Unit].
    assert "StartLimitBurst" not in SERVICE["Service"] and "StartLimitIntervalSec" not in SERVICE["Service"]
    assert_set(SERVICE, "Unit", StartLimitBurst="5", StartLimitIntervalSec="30s")
    assert_set(SERVICE, "Service", Restart="on-failure")


def test_service_has_watchdog_sandbox_and_socket_dependency() -> None:
    assert_set(SERVICE, "Service", WatchdogSec="30s", DynamicUser="yes", ProtectSystem="strict", KillMode="mixed")
    assert_set(SERVICE, "Unit", Requires="apisix-python-runner.socket")


def test_socket_is_group_apisix_0660_and_removed_on_stop() -> None:
    assert_set(SOCKET, "Socket", ListenStream="/run/apisix-python-runner/runner.sock", RemoveOnStop="yes")
    assert_set(SOCKET, "Socket", SocketGroup="apisix", SocketMode="0660")


def test_units_documentation_is_the_file_the_install_steps_install() -> None:
    install = docs_block("systemd-install")
    for unit in (SERVICE, SOCKET):
        doc = one(unit, "Unit", "Documentation")
        assert doc.startswith("file:")
        target = Path(doc.removeprefix("file:"))
        assert f"install -m 0644 docs/{target.name} {target.parent}/" in install


def test_install_steps_create_what_the_units_use() -> None:
    install = docs_block("systemd-install")
    assert "groupadd --system apisix" in install  # SocketGroup=apisix fails with 216/GROUP without it
    assert "usermod -a -G apisix " in install  # APISIX's workers must be in the group
    assert "python3 -m venv /opt/apisix-runner" in install  # ExecStart's interpreter
    assert "pip install --require-hashes -r deploy/requirements.lock" in install
    assert "deploy/runner.toml /etc/apisix-runner/runner.toml" in install
    assert "deploy/apisix-python-runner.socket deploy/apisix-python-runner.service /etc/systemd/system/" in install
    assert "systemctl enable --now apisix-python-runner.socket apisix-python-runner.service" in install


def test_documented_checks_see_the_plugin_directory_as_the_service_does() -> None:
    # DynamicUser=yes alone makes the whole file system read-only; the service's
    # ConfigurationDirectory= is mounted as it is on the host, as the service sees it.
    directory = one(SERVICE, "Service", "ConfigurationDirectory")
    for block in ("systemd-check", "systemd-recover"):
        command = docs_block(block).replace("\\\n", " ")
        assert f"-p DynamicUser=yes -p ConfigurationDirectory={directory} " in command
        assert f"{RUNNER_BIN} check --config /etc/apisix-runner/runner.toml" in command


def test_documented_recovery_resets_and_starts_the_socket_unit() -> None:
    recover = docs_block("systemd-recover")
    assert "systemctl reset-failed apisix-python-runner.service apisix-python-runner.socket" in recover
    assert "systemctl start apisix-python-runner.socket" in recover


def test_docs_point_apisix_at_the_socket_the_socket_unit_creates() -> None:
    assert f"path_for_test: {one(SOCKET, 'Socket', 'ListenStream')}" in DOCS.read_text()


def test_example_runner_toml_is_accepted_by_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runner", "check", "--config", str(DEPLOY / "runner.toml"), "--plugins", "plugins"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image ----------------------------------------------------------------------------


def test_runtime_stage_runs_as_65532_with_socket_and_plugins_in_env() -> None:
    runtime = dockerfile_stages()[-1]
    assert ("USER", "65532:65532") in runtime
    env = env_of(runtime)
    assert env["APISIX_LISTEN_ADDRESS"] == "unix:/run/a6/runner.sock"
    assert env["A6_RUNNER_PLUGINS"] == "/etc/apisix-runner/plugins"
    assert ("COPY", "plugins /etc/apisix-runner/plugins") in runtime
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root


def test_socket_directory_belongs_to_the_runtime_user() -> None:
    runtime = dockerfile_stages()[-1]
    assert ("VOLUME", '["/run/a6"]') in runtime
    runs = [json.loads(rest) for op, rest in runtime if op == "RUN"]
    assert ["/usr/bin/install", "-d", "-o", "65532", "-g", "65532", "-m", "0755", "/run/a6"] in runs


def test_entrypoint_is_exec_form_and_healthcheck_follows_pid_1_with_a_start_period() -> None:
    runtime = dict(dockerfile_stages()[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == [RUNNER_BIN]
    assert json.loads(runtime["CMD"]) == ["run"]
    options, _, command = runtime["HEALTHCHECK"].partition(" CMD ")
    assert "--start-period=" in options
    assert json.loads(command) == [RUNNER_BIN, "health", "--pid", "1"]


def test_image_plugins_are_writable_by_root_only_whatever_the_checkout() -> None:
    # COPY keeps the context's modes; a umask-002 checkout would give group-writable files,
    # which the runner refuses on a writable root.
    runtime = dockerfile_stages()[-1]
    copy = runtime.index(("COPY", "plugins /etc/apisix-runner/plugins"))
    runs = [json.loads(rest) for op, rest in runtime[copy:] if op == "RUN"]
    assert ["/usr/bin/chmod", "-R", "u=rwX,go=rX", "/etc/apisix-runner/plugins"] in runs


def test_runtime_stage_gets_only_the_venv_from_the_build_stage() -> None:
    runtime = dockerfile_stages()[-1]
    assert [rest for op, rest in runtime if op == "COPY" and "--from" in rest] == [
        "--from=build /opt/apisix-runner /opt/apisix-runner"
    ]
    assert not [rest for op, rest in runtime if op == "RUN" and "pip" in rest]


def test_build_stage_installs_only_hash_checked_dependencies() -> None:
    build = dockerfile_stages()[1]
    runs = " ".join(rest for op, rest in build if op == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    assert "--no-build-isolation" in runs  # setuptools from the pinned base, not from PyPI
    assert "--no-index" in runs  # the venv gets the wheels built above, nothing fetched
    assert ("COPY", "deploy/requirements.lock ./") in build


def test_bases_are_the_tags_build_base_sh_makes() -> None:
    args = dict(rest.split("=", 1) for op, rest in dockerfile_stages()[0] if op == "ARG")
    script = (DEPLOY / "image" / "build-base.sh").read_text()
    suite = re.search(r"^SUITE=\$\{SUITE:-(\w+)\}", script, re.M)
    snapshot = re.search(r"^SNAPSHOT=\$\{SNAPSHOT:-(\d{8})T\d{6}Z\}", script, re.M)
    assert suite and snapshot
    tag = f"{suite.group(1)}-{snapshot.group(1)}"
    assert args["BASE"] == f"apisix-python-runner-base:{tag}"
    assert args["BUILD_BASE"] == f"apisix-python-runner-build:{tag}"
    assert dockerfile_stages()[1][0] == ("FROM", "${BUILD_BASE} AS build")
    assert dockerfile_stages()[-1][0] == ("FROM", "${BASE}")


def test_dockerignore_lets_through_exactly_what_the_dockerfile_copies() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    copied = {
        source.rstrip("/")
        for stage in dockerfile_stages()
        for op, rest in stage
        if op == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert rules[0] == "*"
    allowed = {rule[1:].removesuffix("/**") for rule in rules if rule.startswith("!")}
    assert copied == allowed


# --- the lock -----------------------------------------------------------------------------


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    text = (DEPLOY / "requirements.lock").read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--") else line
        if not line:
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        assert version, f"{spec} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        assert all(o.startswith("--hash=sha256:") for o in options), options
        entries[name.lower()] = (version, hashes)
    return entries


def test_lock_pins_every_dependency_with_hashes_and_nothing_else() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    entries = lock_entries()
    assert set(entries) == {r.name.lower() for r in requirements}
    for requirement in requirements:
        version, hashes = entries[requirement.name.lower()]
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} outside {requirement}"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


# --- Kubernetes -----------------------------------------------------------------------------

# The "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards),
# the controls a Deployment's pod can break.
RESTRICTED_VOLUMES = {
    *("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret")
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    found = []
    pod = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(flag)
    for volume in spec.get("volumes", []):
        if set(volume) - {"name"} - RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: only NET_BIND_SERVICE may be added")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


def test_manifest_passes_the_restricted_pod_security_level() -> None:
    assert restricted_violations(pod_spec(manifest())) == []


@pytest.mark.parametrize(
    ("path", "value", "violation"),
    [
        (["initContainers", 0, "securityContext", "allowPrivilegeEscalation"], True, "allowPrivilegeEscalation"),
        (["containers", 0, "securityContext", "seccompProfile", "type"], "Unconfined", "seccompProfile"),
        (["containers", 0, "securityContext", "runAsUser"], 0, "runAsUser 0"),
        (["volumes", 0], {"name": "h", "hostPath": {"path": "/"}}, "volume h"),
        (["initContainers", 0, "securityContext", "capabilities", "drop"], [], "drop ALL"),
    ],
)
def test_restricted_check_catches_each_broken_field(path: list[Any], value: object, violation: str) -> None:
    spec = copy.deepcopy(pod_spec(manifest()))
    target: Any = spec
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert any(violation in v for v in restricted_violations(spec))


def test_runner_is_a_native_sidecar_sharing_the_socket_volume_with_apisix() -> None:
    spec = pod_spec(manifest())
    (runner,) = spec["initContainers"]
    (apisix,) = spec["containers"]
    assert runner["restartPolicy"] == "Always"
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (runner, apisix)}
    assert mounts[runner["name"]]["a6-socket"] == mounts[apisix["name"]]["a6-socket"] == "/run/a6"
    assert {"name": "a6-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in spec["volumes"]
    assert spec["securityContext"]["fsGroup"] == apisix["securityContext"]["runAsGroup"]  # a 0660 socket suffices
    assert runner["args"] == ["run", "--socket-mode", "0660"]


def test_apisix_config_points_at_the_runner_socket() -> None:
    docs = manifest()
    config = yaml.safe_load(kind(docs, "ConfigMap", "apisix-config")["data"]["config.yaml"])
    (runner,) = pod_spec(docs)["initContainers"]
    env = {e["name"]: e["value"] for e in runner["env"]}
    assert "unix:" + config["ext-plugin"]["path_for_test"] == env["APISIX_LISTEN_ADDRESS"]
    assert "cmd" not in config["ext-plugin"]
    (apisix,) = pod_spec(docs)["containers"]
    assert {m["mountPath"] for m in apisix["volumeMounts"]} >= {"/usr/local/apisix/conf/config.yaml"}


def test_compose_uses_the_same_apisix_config_and_socket_volume() -> None:
    config = yaml.safe_load(kind(manifest(), "ConfigMap", "apisix-config")["data"]["config.yaml"])
    assert yaml.safe_load((DEPLOY / "compose" / "config.yaml").read_text()) == config
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    runner, apisix = compose["services"]["runner"], compose["services"]["apisix"]
    assert "a6:/run/a6" in runner["volumes"] and "a6:/run/a6" in apisix["volumes"]
    assert runner["read_only"] is True
    assert runner["environment"]["A6_RUNNER_SOCKET_GROUP"] in runner["group_add"]


def test_images_are_not_always_pulled() -> None:
    spec = pod_spec(manifest())
    for c in spec["initContainers"] + spec["containers"]:
        assert c["imagePullPolicy"] == "IfNotPresent"
        assert not c["image"].endswith(":latest") and ":" in c["image"]


def test_runner_memory_is_measured_for_the_defaults_it_keeps() -> None:
    (runner,) = pod_spec(manifest())["initContainers"]
    assert set(runner["resources"]) == {"requests", "limits"}
    assert runner["resources"]["requests"]["memory"] == "64Mi" and "cpu" in runner["resources"]["requests"]
    assert runner["resources"]["limits"]["memory"] == "256Mi"
    # The figures hold for one process with the default memory_budget (docs/operations.md, "Memory").
    env = {e["name"] for e in runner["env"]}
    assert not env & {"A6_RUNNER_WORKERS", "A6_RUNNER_MEMORY_BUDGET"}
    assert not {"--workers", "--memory-budget"} & set(runner["args"])
    text = (DEPLOY / "kubernetes.yaml").read_text()
    assert "TODO-MEASURED" not in text
    just_above = text[: text.index("          resources:")].rsplit("livenessProbe:", 1)[-1]
    assert "deploy/verify/memory.sh" in just_above  # where the figures come from


def test_plugin_configmap_is_the_repository_example() -> None:
    data = kind(manifest(), "ConfigMap", "apisix-python-plugins")["data"]
    assert data["say.py"] == (ROOT / "plugins" / "say.py").read_text()


# --- the verify scripts -------------------------------------------------------------------------


SCRIPTS = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.glob("**/*.sh"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_deploy_scripts_are_valid_bash(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / script)], capture_output=True).returncode == 0
