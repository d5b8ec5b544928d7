"""The deployment files of deploy/ against the code they start: the systemd unit and its environment file,
the Dockerfile, the compose file and the example cluster config.

Checked: the unit passes ``systemd-analyze verify`` (when present; ExecStart pointed at an existing binary,
since /opt/dsdn is not installed here) and has its hardening; every command they run is a console script of
pyproject's [project.scripts] and its arguments parse with that command's own parser; every environment
variable they set is one the code reads (node/config.py, recorded while it loads the very environment; the
few read elsewhere: DEVNET_AUTH_TOKEN and BLOBSTORE_WRITERS by the devnet and the blob store); the example
cluster config and the cluster config the compose ``init`` service writes parse with node/config.py into the
right members; the Dockerfile's COPY sources exist. Nothing here builds an image or
needs Docker.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest

from node import config, identity
from node.process import hypercorn_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "dsdn-coordinator.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "coordinator.env.example"
CLUSTER_EXAMPLE = DEPLOY / "cluster.example.toml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
COORDINATORS = [f"coordinator-{i}" for i in range(4)]
SECRETS = ("DA_AUTH_TOKEN", "COORDINATOR_API_TOKEN", "KEYSTORE_PASSPHRASE")


# ---- what the code reads -----------------------------------------------------------------------------


class RecordingEnv(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def load_recording(env: Mapping[str, str]) -> tuple[config.Config, set[str]]:
    """node/config.py's load() of ``env`` and the names it read."""
    recording = RecordingEnv(env)
    return config.load(recording), recording.read


def environ_reads(*modules: str) -> set[str]:
    """Names a module reads with os.environ.get("NAME") (the entry points' own variables)."""
    names: set[str] = set()
    for module in modules:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        names |= set(re.findall(r"os\.environ\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    return names


def logging_reads() -> set[str]:
    """What node.process.setup_logging reads in every process of ours (through node.config)."""
    recording = RecordingEnv({})
    config.log_level(recording), config.log_format(recording)
    return recording.read


PROCESS_VARS = environ_reads("node.process") | logging_reads()  # LOG_LEVEL, LOG_FORMAT: every process of ours
COORDINATOR_VARS = PROCESS_VARS | environ_reads("deploy.coordinator")


def test_environ_reads_finds_the_entry_points_variables() -> None:
    assert {"LOG_LEVEL", "LOG_FORMAT"} <= PROCESS_VARS
    assert "DEVNET_AUTH_TOKEN" in environ_reads("deploy.devnet")
    assert "BLOBSTORE_WRITERS" in environ_reads("deploy.blobstore")


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def resolve_script(name: str) -> Any:
    target = scripts()[name]
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class _Parsed(Exception):  # a control-flow signal, not an error
    def __init__(self, prog: str, namespace: argparse.Namespace) -> None:
        super().__init__(prog)
        self.prog, self.namespace = prog, namespace


def check_command(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` runs a console script of pyproject and its arguments parse with that command's own parser
    (the parse is intercepted: nothing starts). Returns the parsed arguments of a ``dsdn`` subcommand."""
    assert argv, "empty command"
    assert argv[0] in scripts(), f"{argv[0]!r} is not a console script of pyproject ({sorted(scripts())})"
    entry = resolve_script(argv[0])
    assert callable(entry)
    if argv[0] == "dsdn-coordinator":
        assert argv == ["dsdn-coordinator"], "dsdn-coordinator takes no arguments: it reads its environment"
        return None
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(self.prog, original(self, args, namespace))  # unknown or bad arguments: SystemExit(2)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), pytest.raises(_Parsed) as got:
        entry(argv[1:])
    assert got.value.prog == " ".join(argv[:2]), f"{argv}: parsed by {got.value.prog!r}, not the subcommand's parser"
    return got.value.namespace


def test_check_command_refuses_what_does_not_exist() -> None:
    with pytest.raises(AssertionError):
        check_command(["dsdn-node"])
    with pytest.raises(SystemExit):
        check_command(["dsdn", "devnet", "--no-such-flag"])
    assert check_command(["dsdn", "blobstore", "--port", "8181"]).port == 8181  # type: ignore[union-attr]


# ---- the systemd unit --------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file: [(key, value)] in order (keys may repeat); continuation lines refused."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        assert not stripped.endswith("\\"), f"line {number}: keep unit settings on one line"
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), [])
            continue
        key, sep, value = stripped.partition("=")
        assert sep and current is not None, f"line {number}: not key=value in a section: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def unit_value(section: list[tuple[str, str]], key: str) -> str:
    values = unit_values(section, key)
    assert len(values) == 1, f"{key}: expected once, found {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span such as 30, 30s, 1min 30s, 500ms."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (systemd's EnvironmentFile=, docker's --env-file); comments and blanks skipped."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", line)
        assert match, f"{path.name}:{number}: not KEY=value without spaces or quotes: {line!r}"
        assert match[1] not in env, f"{path.name}:{number}: {match[1]} set twice"
        env[match[1]] = match[2]
    return env


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # /opt/dsdn/venv is not installed here: verify a copy whose ExecStart is an existing executable
    binary = shutil.which("true") or sys.executable
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={binary}", UNIT.read_text())
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line or UNIT.stem in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_unit_runs_the_coordinator_with_its_hardening(unit: dict[str, list[tuple[str, str]]]) -> None:
    service = unit["Service"]
    exec_start = shlex.split(unit_value(service, "ExecStart"))
    assert Path(exec_start[0]).is_absolute()
    check_command([Path(exec_start[0]).name, *exec_start[1:]])
    assert unit_value(service, "EnvironmentFile") == "/etc/dsdn/coordinator.env"  # mandatory: no "-" prefix
    assert unit_value(service, "Restart") == "on-failure"
    assert seconds(unit_value(service, "RestartSec")) > 0
    assert "2" in unit_value(service, "RestartPreventExitStatus").split()  # a configuration error: exit 2
    user = unit_value(service, "User")
    assert user not in ("", "root", "0")
    state = unit_value(service, "StateDirectory")
    data_dir = f"/var/lib/{state}"
    assert unit_value(service, "StateDirectoryMode") == "0700"
    assert data_dir in unit_value(service, "ReadWritePaths").split()
    assert unit_value(service, "WorkingDirectory") == data_dir
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "KillSignal": "SIGTERM"}.items():
        assert unit_value(service, key) == value, key
    assert set(unit_value(service, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(unit_value(service, "LimitNOFILE")) >= 4096
    assert unit_value(service, "CapabilityBoundingSet") == ""  # ports above 1024: no capability
    # SIGTERM is the graceful stop: Hypercorn's drain, then the final snapshot; SIGKILL only well after
    assert seconds(unit_value(service, "TimeoutStopSec")) >= 3 * hypercorn_config("127.0.0.1", 0).graceful_timeout
    assert unit_value(unit["Install"], "WantedBy") == "multi-user.target"


def unit_environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_values(unit["Service"], "Environment"):
        for item in shlex.split(value):
            name, _, val = item.partition("=")
            env[name] = val
    return env


def example_env(unit: dict[str, list[tuple[str, str]]], tmp_path: Path, *, secrets: bool) -> dict[str, str]:
    """What the coordinator of the unit sees with the example env file (EnvironmentFile= wins over
    Environment=), its paths moved to this machine: the example cluster config, a fresh data dir."""
    env = {**unit_environment(unit), **parse_env_file(ENV_EXAMPLE)}
    env["CLUSTER_CONFIG"] = str(CLUSTER_EXAMPLE)
    env["COORDINATOR_DATA_DIR"] = str(tmp_path / "data")
    if secrets:
        env.update({name: f"test-{name.lower()}" for name in SECRETS})
        env["DA_START_HEIGHT"] = "4000000"  # (left to fill in too: see the next test)
    return env


def test_unit_and_env_example_set_only_variables_the_coordinator_reads(
        unit: dict[str, list[tuple[str, str]]], tmp_path: Path) -> None:
    example = parse_env_file(ENV_EXAMPLE)
    assert unit_environment(unit)["COORDINATOR_DATA_DIR"] == "/var/lib/" + unit_value(unit["Service"],
                                                                                        "StateDirectory")
    assert example["COORDINATOR_DATA_DIR"] == unit_environment(unit)["COORDINATOR_DATA_DIR"]
    assert example["CLUSTER_CONFIG"] == unit_environment(unit)["CLUSTER_CONFIG"]
    env = example_env(unit, tmp_path, secrets=True)
    cfg, read = load_recording(env)
    unread = set(env) - read - COORDINATOR_VARS
    assert not unread, f"set but read by nothing: {sorted(unread)}"
    # the example is one consistent member of the example cluster, on a real Celestia network
    assert cfg.da_network == "mainnet" and not cfg.use_mock_da
    assert cfg.coordinator_id in {p.id for p in cfg.peers} and len(cfg.peers) == 4
    me = next(p for p in cfg.peers if p.id == cfg.coordinator_id)
    assert cfg.peer_port == me.port and cfg.peer_host == "0.0.0.0"
    assert cfg.quorum_validator and len(cfg.quorum_validators) == len(cfg.peers)
    assert cfg.quorum_validator_keys == tuple(p.public_key for p in cfg.peers)
    for url, peer in zip(cfg.quorum_validators, cfg.peers, strict=True):
        assert urlsplit(url).hostname == peer.host and urlsplit(url).port == cfg.port
    assert cfg.emergency_da_url and cfg.emergency_da_key


def test_env_example_leaves_the_secrets_to_fill_in(unit: dict[str, list[tuple[str, str]]], tmp_path: Path) -> None:
    example = parse_env_file(ENV_EXAMPLE)
    assert all(example[name] == "" for name in SECRETS)
    # no start height to copy blindly: 1 on a pruning mainnet node (the window set beside it) stalled the first read
    # for good; left empty, the coordinator refuses to start until it is set
    assert example["DA_START_HEIGHT"] == "" and int(example["DA_STORAGE_WINDOW_S"]) > 0
    env = example_env(unit, tmp_path, secrets=True)
    del env["DA_START_HEIGHT"]
    with pytest.raises(config.ConfigError, match="keeps no height 1") as refused:
        config.load(env)
    assert refused.value.var == "DA_START_HEIGHT"
    # as shipped it refuses to start (exit 2) rather than run with a placeholder token
    with pytest.raises(config.ConfigError) as refused:
        config.load(example_env(unit, tmp_path, secrets=False))
    assert refused.value.var in SECRETS


# ---- the example cluster config ----------------------------------------------------------------------


def test_cluster_example_parses_with_the_project_parser() -> None:
    ids = [m["id"] for m in tomllib.loads(CLUSTER_EXAMPLE.read_text())["member"]]
    assert len(ids) == 4
    for member in ids:
        cfg = config.load({"USE_MOCK_DA": "true", "CLUSTER_CONFIG": str(CLUSTER_EXAMPLE), "COORDINATOR_ID": member})
        assert [p.id for p in cfg.peers] == ids
        assert cfg.cluster_id == "dsdn-prod"
        assert len({p.public_key for p in cfg.peers}) == 4 and len({p.host for p in cfg.peers}) == 4
        assert {p.port for p in cfg.peers} == {8280}
        assert set(cfg.cluster_member_keys) == {p.public_key for p in cfg.peers}
    with pytest.raises(config.ConfigError):  # a host that is not a member refuses to start
        config.load({"USE_MOCK_DA": "true", "CLUSTER_CONFIG": str(CLUSTER_EXAMPLE), "COORDINATOR_ID": "other"})


# ---- the Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line at the end"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


def is_docker_ignored(path: str) -> bool:
    """Docker's rule for a path and the .dockerignore patterns: the last matching pattern wins ("!" keeps)."""
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        matches = (pattern == "**" or fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern + "/*")
                   or (pattern.startswith("**/") and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern[3:])))
        if matches:
            ignored = not keep
    return ignored


def docker_env(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def test_dockerfile_paths_commands_and_variables() -> None:
    instructions = dockerfile_instructions()
    by_name: dict[str, list[str]] = {}
    for name, args in instructions:
        by_name.setdefault(name, []).append(args)
    assert by_name["FROM"] == ["python:3.11-slim"]
    # COPY sources exist in the build context (the repository root: compose's context is ..)
    copied = set()
    for args in by_name["COPY"]:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert list(ROOT.glob(source)), f"COPY {source}: no such path in the repository"
            assert not is_docker_ignored(source), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
            copied.add(source.split("/")[0])
    assert is_docker_ignored(".dsdn") and is_docker_ignored(".venv") and is_docker_ignored("deploy/.env")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= copied, "pip install . needs these"
    assert any(args.startswith("pip install .") for args in by_name["RUN"])
    users = by_name["USER"]
    assert users and users[-1] not in ("root", "0")
    env = {k: v for args in by_name["ENV"] for k, v in docker_env(args).items()}
    cfg, read = load_recording({**env, "USE_MOCK_DA": "true", "COORDINATOR_API_TOKEN": "t"})
    ours = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}  # the interpreter's and pip's own
    assert not ours - read - COORDINATOR_VARS, f"ENV read by nothing: {sorted(ours - read - COORDINATOR_VARS)}"
    volumes = [v for args in by_name["VOLUME"] for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert str(cfg.data_dir) in volumes
    exposed = {int(p.split("/")[0]) for args in by_name["EXPOSE"] for p in args.split()}
    assert cfg.port in exposed and 8280 in exposed  # the peer port of compose and of the example cluster
    healthcheck = by_name["HEALTHCHECK"][0]
    assert "/health" in healthcheck and "COORDINATOR_PORT" in healthcheck
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])  # the exec form: a JSON list
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    check_command(json.loads(by_name["CMD"][-1]))  # the exec form: a JSON list


# ---- the compose file --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: object) -> str:
    """Compose's ${VAR:?message} / ${VAR:-default} / ${VAR}, with VAR given the value test-<var>."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?[?-][^}]*)?\}", lambda m: f"test-{m[1].lower()}", str(value))


def service_argv(compose: dict[str, Any], name: str) -> tuple[list[str], list[str]]:
    """(the command the service ends up running, files it sources before: `sh -c "set -a && . F && exec …"`)."""
    command = compose["services"][name].get("command")
    if command is None:
        return json.loads(dict(dockerfile_instructions())["CMD"]), []
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] != ["sh", "-c"]:
        return argv, []
    assert len(argv) == 3
    steps = [step.strip() for step in argv[2].split("&&")]
    assert steps[-1].startswith("exec "), f"{name}: the shell must exec the service (signals reach it as PID 1)"
    sourced = []
    for step in steps[:-1]:
        if step == "set -a":
            continue
        assert step.startswith(". "), f"{name}: unexpected shell step {step!r}"
        sourced.append(step[2:].strip())
    return shlex.split(steps[-1])[1:], sourced


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> volume name."""
    out = {}
    for spec in service.get("volumes", []):
        volume, target, *_ = spec.split(":")
        out[target] = volume
    return out


def run_init(compose: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """Run the init service's script here, its mount points moved under tmp_path; volume name -> folder."""
    init = compose["services"]["init"]
    argv = init["command"]
    assert argv[:2] == ["python", "-c"]
    volumes: dict[str, Path] = {}
    for target, volume in mounts(init).items():
        volumes[volume] = tmp_path / target.lstrip("/")
    assert argv[5] == "dsdn"  # the owner of the data: the image's user (not here: "-" leaves the owner)
    args = [str(tmp_path / argv[3].lstrip("/")), str(tmp_path / argv[4].lstrip("/")), "-", *argv[6:]]
    (tmp_path / argv[4].lstrip("/")).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", argv[2], *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "members:" in done.stdout
    return volumes


def host_path(service: dict[str, Any], path: str, volumes: dict[str, Path]) -> Path:
    """Where a path inside the service's container is here, through its volume mounts."""
    for target, volume in sorted(mounts(service).items(), key=lambda item: -len(item[0])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return volumes[volume] / path[len(target):].lstrip("/")
    raise AssertionError(f"{path} is on no volume of the service")


def test_compose_services_and_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"init", "devnet", "blobstore", *COORDINATORS}
    for name in services:
        if name == "init":
            continue
        argv, _ = service_argv(compose, name)
        check_command(argv)
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / services[name]["build"]["context"] / "deploy" / "Dockerfile").resolve() == DOCKERFILE
    init = services["init"]["command"]
    compile(init[2], "init", "exec")
    assert init[5] == [args for name, args in dockerfile_instructions() if name == "USER"][-1]  # owns the data
    assert "from node import identity" in init[2] and hasattr(identity, "load_or_create")
    assert init[6:] == COORDINATORS
    for name, service in services.items():  # a configuration error (exit 2) fails again: restarted a few times only
        assert service.get("restart") == "no" or re.fullmatch(r"on-failure:[0-9]+", service.get("restart", "")), name
    for name in COORDINATORS:  # each coordinator its own volume, declared at the top level
        assert mounts(services[name])["/var/lib/dsdn"] == name and name in compose["volumes"]
        # as long as the unit waits for the graceful stop before SIGKILL
        stop_unit = seconds(unit_value(parse_unit(UNIT.read_text())["Service"], "TimeoutStopSec"))
        assert seconds(services[name]["stop_grace_period"]) == stop_unit


def test_compose_environments_are_read_and_consistent(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    volumes = run_init(compose, tmp_path)
    config_dir = volumes[mounts(services["init"])[services["init"]["command"][4]]]
    devnet_args = check_command(service_argv(compose, "devnet")[0])
    store_argv, store_sourced = service_argv(compose, "blobstore")
    store_args = check_command(store_argv)
    assert devnet_args is not None and store_args is not None
    devnet_env = {k: interpolate(v) for k, v in services["devnet"]["environment"].items()}
    assert set(devnet_env) <= environ_reads("deploy.devnet") | PROCESS_VARS
    store_env = {k: interpolate(v) for k, v in services["blobstore"].get("environment", {}).items()}
    for sourced in store_sourced:
        store_env.update(parse_env_file(host_path(services["blobstore"], sourced, volumes)))
    store_dir = host_path(services["blobstore"], store_args.data_dir, volumes)
    store_key = bytes(identity.load_or_create(store_dir).verify_key).hex()

    member_keys = []
    for name in COORDINATORS:
        service = services[name]
        argv, sourced = service_argv(compose, name)
        assert argv == ["dsdn-coordinator"]
        env = {k: interpolate(v) for k, v in service["environment"].items()}
        assert env["COORDINATOR_ID"] == name
        for path in sourced:
            env.update(parse_env_file(host_path(service, path, volumes)))
        env["CLUSTER_CONFIG"] = str(host_path(service, env["CLUSTER_CONFIG"], volumes))
        env["COORDINATOR_DATA_DIR"] = str(host_path(service, env["COORDINATOR_DATA_DIR"], volumes))
        cfg, read = load_recording(env)
        unread = set(env) - read - COORDINATOR_VARS
        assert not unread, f"{name}: set but read by nothing: {sorted(unread)}"
        assert Path(env["CLUSTER_CONFIG"]).parent == config_dir
        # the member's entry holds the key of the identity.key in its own volume (the coordinator checks it)
        assert [p.id for p in cfg.peers] == COORDINATORS
        me = next(p for p in cfg.peers if p.id == name)
        assert me.public_key == bytes(identity.load_or_create(cfg.data_dir).verify_key)
        assert (me.host, me.port) == (name, cfg.peer_port)
        member_keys.append(me.public_key.hex())
        # the DA endpoints are the services, on their ports, with the devnet's token
        assert urlsplit(cfg.da_rpc_url or "").hostname == "devnet"
        assert urlsplit(cfg.da_rpc_url or "").port == devnet_args.port
        assert cfg.da_auth_token == devnet_env["DEVNET_AUTH_TOKEN"]
        assert cfg.api_token and cfg.api_token != cfg.da_auth_token
        assert urlsplit(cfg.emergency_da_url or "").hostname == "blobstore"
        assert urlsplit(cfg.emergency_da_url or "").port == store_args.port
        assert cfg.emergency_da_key is not None and cfg.emergency_da_key.hex() == store_key
        assert [urlsplit(u).hostname for u in cfg.quorum_validators] == COORDINATORS
        assert {urlsplit(u).port for u in cfg.quorum_validators} == {cfg.port}
        assert cfg.quorum_validator_keys == tuple(p.public_key for p in cfg.peers)
        assert f"127.0.0.1:{8080 + COORDINATORS.index(name)}:{cfg.port}" in service["ports"]
    # the blob store takes writes from the four coordinators only
    assert store_env["BLOBSTORE_WRITERS"].split(",") == member_keys
    store_unread = set(store_env) - environ_reads("deploy.blobstore") - PROCESS_VARS
    assert not store_unread, f"blobstore: set but read by nothing: {sorted(store_unread)}"


def test_compose_init_is_idempotent(compose: dict[str, Any], tmp_path: Path) -> None:
    first = run_init(compose, tmp_path)
    keys = {v: (p / identity.KEY_FILE).read_bytes() for v, p in first.items() if (p / identity.KEY_FILE).exists()}
    assert len(keys) == 5  # four coordinators and the blob store
    run_init(compose, tmp_path)
    assert keys == {v: (first[v] / identity.KEY_FILE).read_bytes() for v in keys}


def _docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, "DSDN_API_TOKEN": "a" * 32, "DSDN_DA_AUTH_TOKEN": "b" * 32}
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
