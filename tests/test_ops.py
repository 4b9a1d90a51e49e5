"""Deployment artefacts: the systemd units and env file in ``daemons/``, the image and compose file in ``docker/``.

What can run here runs for real: ``systemd-analyze`` on the units, the daemons' sd_notify protocol against a
socket standing in for systemd's, the image's entrypoint and health check as local processes, and
``docker compose config`` when a compose implementation is installed. No Docker engine or systemd
manager is needed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import TIMERCTL, process_env
from tests.fixtures_http import Receiver
from timerctl.config import OPTIONS, Settings, load_settings
from timerctl.timeparse import parse_duration

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "daemons").glob("timerctl-*.service"))
ENV_FILE = ROOT / "daemons" / "timerctl.env"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INSTALLED = "/opt/timerctl/venv/bin/timerctl"
ROLES = ("consumer", "runner", "api")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}
#: Where each compose variable points, and what it becomes on this machine: nothing, i.e. embedded.
COMPOSE_TO_LOCAL = {"TIMERCTL_KAFKA_BOOTSTRAP": None, "TIMERCTL_MONGO_URI": None, "TIMERCTL_REDIS_URL": None}
WATCHDOG_USEC = 200_000


# -- helpers ------------------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}`` of a unit file (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(role: str) -> dict[str, list[str]]:
    return unit(ROOT / "daemons" / f"timerctl-{role}.service")["Service"]


def verify_problems(directory: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the units in ``directory``: empty when they are valid.

    Unknown keys and unparsable values are only warnings with exit code 0, so its output counts too.
    """
    files = sorted(p.name for p in directory.glob("*.service"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files], cwd=directory, capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "timerctl" in line]
    if done.returncode != 0:
        problems.append(f"exit code {done.returncode}")
    return problems


def local_units(directory: Path) -> Path:
    """Copies of the units runnable here: ExecStart on this venv's timerctl, no User=/Group= (no such user)."""
    directory.mkdir()
    for path in UNITS:
        text = path.read_text().replace(f"ExecStart={INSTALLED} ", f"ExecStart={TIMERCTL} ")
        text = re.sub(r"^(User|Group)=.*\n", "", text, flags=re.MULTILINE)
        (directory / path.name).write_text(text)
    return directory


class NotifySocket:
    """Stands in for systemd's ``$NOTIFY_SOCKET``: each sd_notify datagram with the pid that sent it."""

    def __init__(self, directory: Path) -> None:
        path = str(directory / "notify.sock")
        # sun_path holds 107 bytes; a deep tmp dir falls back to the abstract namespace ("@"), as systemd allows.
        self.address = path if len(path) < 100 else f"@timerctl-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.address if path == self.address else "\0" + self.address[1:])
        self.seen: list[str] = []

    def expect(self, message: str, timeout: float) -> int:
        """The pid that sent the next datagram carrying ``message``; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        creds = struct.calcsize("3i")
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except TimeoutError:
                break
            lines = data.decode().splitlines()
            self.seen.extend(lines)
            if message in lines:
                pids = [struct.unpack("3i", d[:creds])[0] for lvl, typ, d in ancillary if typ == socket.SCM_CREDENTIALS]
                return pids[0] if pids else -1
        raise AssertionError(f"no {message} within {timeout}s; received {self.seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path)
    yield listener
    listener.close()


class Daemon:
    """One daemon process with its log in a file; killed at the end if a test left it running."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def terminate(self, timeout: float = 30) -> int:
        """The exit code after SIGTERM; AssertionError with the log when it outlives ``timeout``."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout}s after SIGTERM\n--- log ---\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon_procs() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def check_lifecycle(daemon: Daemon, notify: NotifySocket, watchdog: bool, ready_timeout: float = 20) -> None:
    """READY=1 from the main pid, WATCHDOG=1 (twice) when asked for, STOPPING=1 on SIGTERM, exit 0."""
    try:
        assert notify.expect("READY=1", ready_timeout) == daemon.proc.pid, "NotifyAccess=main needs the main pid"
        if watchdog:
            for _ in range(2):
                assert notify.expect("WATCHDOG=1", 10 * WATCHDOG_USEC / 1e6) == daemon.proc.pid
        daemon.proc.send_signal(signal.SIGTERM)
        assert notify.expect("STOPPING=1", 20) == daemon.proc.pid
        assert daemon.proc.wait(30) == 0
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.tail()}") from exc


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def docker_instruction(name: str) -> str:
    found = [args for instruction, args in dockerfile() if instruction == name]
    assert len(found) == 1, f"expected one {name} in {DOCKERFILE}, found {found}"
    return found[0]


def local_argv(argv: list[str]) -> list[str]:
    """A command as the image runs it, with ``timerctl`` on this venv's console script."""
    assert argv[0] == "timerctl", argv
    return [TIMERCTL, *argv[1:]]


# -- systemd ------------------------------------------------------------------------------------------


def test_a_unit_per_role_and_no_daemons_readme() -> None:
    assert [p.name for p in UNITS] == [f"timerctl-{r}.service" for r in sorted(ROLES)]
    assert not (ROOT / "daemons" / "README.md").exists()


def readme_unit_table() -> dict[str, dict[str, str]]:
    """The README's table of the shipped units: unit file name -> {directive: value, an en dash when unset}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("| `timerctl-")]
    header = next(line.strip() for line in text.splitlines() if line.strip().startswith("| unit | `Type=`"))
    directives = [cell.strip(" `=") for cell in header.strip("|").split("|")[1:]]
    table: dict[str, dict[str, str]] = {}
    for line in lines:
        name, *values = (cell.strip(" `") for cell in line.strip("|").split("|"))
        table[name] = dict(zip(directives, values, strict=True))
    return table


def test_the_readme_describes_the_units_as_shipped() -> None:
    """The README once said the API was Type=exec and the consumer sent no watchdog pings, long after both
    units were Type=notify with WatchdogSec=: its table is now checked against the files."""
    table = readme_unit_table()
    assert sorted(table) == [p.name for p in UNITS]
    for path in UNITS:
        section = unit(path)["Service"]
        for directive, shown in table[path.name].items():
            actual = section.get(directive, ["\u2013"])[-1]  # the README shows an unset directive as an en dash
            assert shown == actual, f"README says {path.name} {directive}={shown}, the unit has {actual}"


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (package systemd)"
)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify_problems(local_units(tmp_path / "units")) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("LockPersonality=yes", "LockPersonalty=yes"),  # unknown key
        ("Restart=on-failure", "Restart=sometimes"),  # invalid value
        ("TimeoutStopSec=60s", "TimeoutStopSec=a minute"),  # unparsable duration
        ("[Service]", "[Servce]"),  # bad section
        ("NoNewPrivileges=yes", "NoNewPrivileges yes"),  # not an assignment
    ],
)
def test_verify_check_catches_a_broken_unit(tmp_path: Path, good: str, bad: str) -> None:
    units = local_units(tmp_path / "units")
    runner = units / "timerctl-runner.service"
    assert good in runner.read_text()
    runner.write_text(runner.read_text().replace(good, bad, 1))
    assert verify_problems(units), f"systemd-analyze accepted {bad!r}"


@needs_systemd_analyze
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_exposure_stays_low(path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_unit_contract(role: str) -> None:
    svc = service(role)
    single = {key: values[-1] for key, values in svc.items()}
    argv = shlex.split(single["ExecStart"])
    assert argv[:3] == [INSTALLED, "serve", role]
    assert argv[argv.index("--log-format") + 1] == "json"
    assert single["Restart"] == "on-failure"
    assert single["EnvironmentFile"] == "/etc/timerctl/timerctl.env"
    assert single["User"] == "timerctl"
    assert "DynamicUser" not in svc, "the SQLite store must keep its owner across restarts"
    assert single["StateDirectory"] == "timerctl"
    assert "TIMERCTL_DB=/var/lib/timerctl/timers.db" in svc["Environment"]
    assert single["KillSignal"] == "SIGTERM"
    assert parse_duration(single["TimeoutStopSec"]).total_seconds() > Settings().drain_timeout.total_seconds() + 30
    for key, value in HARDENING.items():
        assert single.get(key) == value, f"{key}={single.get(key)!r} in timerctl-{role}.service, want {value!r}"
    if role in ("runner", "consumer"):
        assert single["Type"] == "notify"
        assert single["NotifyAccess"] == "main"
    if role == "runner":
        assert parse_duration(single["WatchdogSec"]).total_seconds() >= 10
    if role == "api":
        # Each client connection is a descriptor; the soft default of 1024 would cap the API below the
        # connections uvicorn accepts (timerctl.api_limits.Limits.max_connections).
        assert int(single["LimitNOFILE"]) >= 65536


@pytest.mark.parametrize("role", ROLES)
def test_unit_command_line_is_accepted(role: str) -> None:
    argv = shlex.split(service(role)["ExecStart"][-1])
    done = subprocess.run([TIMERCTL, *argv[1:], "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_env_file_documents_every_setting(tmp_path: Path) -> None:
    """Every row of the settings table is in the env file with its default, meaning and accepted values."""
    lines = ENV_FILE.read_text().splitlines()
    assignments = {}
    explanations = {}
    for number, line in enumerate(lines):
        found = re.fullmatch(r"#?(TIMERCTL_[A-Z_]+)=(.*)", line)
        if found:
            name, value = found.groups()
            assert name not in assignments, f"{name} appears twice in {ENV_FILE.name}"
            explanation = lines[number - 1]
            assert explanation.startswith("# ") and not explanation.startswith("# TIMERCTL_"), f"{name}: no explanation"
            assignments[name] = (value, not line.startswith("#"))
            explanations[name] = explanation
    names = {f"TIMERCTL_{f.name.upper()}" for f in fields(Settings)}
    assert names == {option.variable for option in OPTIONS.values()}
    assert names - assignments.keys() == set(), "settings missing from daemons/timerctl.env"
    assert assignments.keys() - names == {"TIMERCTL_CONFIG"}
    for option in OPTIONS.values():
        expected = f"# {option.meaning}. Accepted: {option.accepted()}."
        assert explanations[option.variable] == expected, f"{option.variable}: explanation differs from the table"
    # Uncommenting every line changes nothing: the commented values are the defaults.
    isolated = {"TIMERCTL_CONFIG": str(tmp_path / "empty.toml")}
    (tmp_path / "empty.toml").touch()
    commented = {name: value for name, (value, active) in assignments.items() if not active}
    assert load_settings(env={**commented, **isolated}) == Settings()
    active = {name: value for name, (value, active) in assignments.items() if active}
    assert active == {"TIMERCTL_DB": "/var/lib/timerctl/timers.db"}
    assert load_settings(env={**active, **isolated}).db_path == "/var/lib/timerctl/timers.db"


def test_runner_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: NotifySocket, daemon_procs: list[Daemon]
) -> None:
    env = {**process_env(tmp_path), "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    argv = [TIMERCTL, "serve", "runner", "--log-format", "json"]
    daemon_procs.append(Daemon(argv, env, tmp_path / "runner.log"))
    check_lifecycle(daemon_procs[-1], notify_socket, watchdog=True)


def test_consumer_ready_stopping(
    tmp_path: Path, notify_socket: NotifySocket, daemon_procs: list[Daemon], kafka_bootstrap: str, kafka_topic: str
) -> None:
    # systemd passes WATCHDOG_USEC only with WatchdogSec=; a unit that sets it needs a consumer that pings.
    watchdog = "WatchdogSec" in service("consumer")
    settings = process_env(tmp_path, kafka_bootstrap=kafka_bootstrap, topic=kafka_topic, group_prefix=kafka_topic)
    env = {**settings, "NOTIFY_SOCKET": notify_socket.address}
    if watchdog:
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    argv = [TIMERCTL, "serve", "consumer", "--log-format", "json"]
    daemon_procs.append(Daemon(argv, env, tmp_path / "consumer.log"))
    check_lifecycle(daemon_procs[-1], notify_socket, watchdog=watchdog, ready_timeout=30)


def test_api_ready_watchdog_stopping(tmp_path: Path, notify_socket: NotifySocket, daemon_procs: list[Daemon]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**process_env(tmp_path), "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    argv = [TIMERCTL, "serve", "api", "--port", str(port), "--log-format", "json"]
    daemon_procs.append(Daemon(argv, env, tmp_path / "api.log"))
    check_lifecycle(daemon_procs[-1], notify_socket, watchdog=True, ready_timeout=30)
    assert service("api")["Type"] == ["notify"]


#: Runs a command with no_new_privs and PR_SET_MDWE (Linux >= 6.3): the kernel's form of systemd's
#: NoNewPrivileges= and MemoryDenyWriteExecute=. Exit 77 when the kernel cannot, or W+X memory is not refused.
HARDENED = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(65, 1, 0, 0, 0):  # PR_SET_NO_NEW_PRIVS, PR_SET_MDWE
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(77)
except PermissionError:
    pass
if len(sys.argv) > 1:
    os.execv(sys.argv[1], sys.argv[1:])
"""


def test_runner_fires_under_memory_deny_write_execute(
    tmp_path: Path, notify_socket: NotifySocket, daemon_procs: list[Daemon], receiver: Receiver
) -> None:
    if subprocess.run([sys.executable, "-c", HARDENED], timeout=30).returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3) to stand in for MemoryDenyWriteExecute=")
    env = {**process_env(tmp_path), "NOTIFY_SOCKET": notify_socket.address}
    argv = [sys.executable, "-c", HARDENED, TIMERCTL, "serve", "runner", "--log-format", "json"]
    daemon_procs.append(runner := Daemon(argv, env, tmp_path / "runner.log"))
    assert notify_socket.expect("READY=1", 20) == runner.proc.pid
    created = subprocess.run(
        [TIMERCTL, "create", "--url", receiver.url(), "--in", "0s", "--json"],
        env={k: v for k, v in env.items() if k != "NOTIFY_SOCKET"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    receiver.wait_for(1, timeout=15)
    assert runner.terminate() == 0, runner.tail()


# -- Docker -------------------------------------------------------------------------------------------


def test_compose_backends() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == "apache/kafka:3.7.0"
    assert services["mongo"]["image"] == "mongo:6.0.13-jammy"
    assert services["redis"]["image"] == "redis:7-alpine"
    kafka = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in kafka["KAFKA_LISTENERS"].split(",")
    assert "PLAINTEXT://:9092" in kafka["KAFKA_LISTENERS"].split(",")
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    for key in ("OFFSETS_TOPIC_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert kafka[f"KAFKA_{key}"] == "1"
    checks = {name: " ".join(service["healthcheck"]["test"]) for name, service in services.items()}
    assert re.search(r"kafka-(broker-api-versions|topics)\.sh .*--bootstrap-server localhost:9092", checks["kafka"])
    assert "mongosh" in checks["mongo"] and 'db.adminCommand("ping")' in checks["mongo"]
    assert checks["redis"].endswith("redis-cli ping")
    assert "http://127.0.0.1:3000/health" in checks["api"]


def test_every_compose_service_is_health_checked_and_waited_for() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and not svc["healthcheck"].get("disable"), name
        for dependency, condition in svc.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert dependency in services
    for role in ROLES:
        assert set(services[role]["depends_on"]) == {"kafka", "mongo", "redis"}


def test_compose_roles_share_one_image() -> None:
    services = compose()["services"]
    roles = {role: services[role] for role in ROLES}
    assert len({json.dumps([s["build"], s["image"]], sort_keys=True) for s in roles.values()}) == 1
    build = roles["runner"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for role, svc in roles.items():
        assert svc["command"][:2] == ["serve", role]
        assert svc["environment"] == {
            "TIMERCTL_KAFKA_BOOTSTRAP": "kafka:9092",
            "TIMERCTL_MONGO_URI": "mongodb://mongo:27017/timerctl",
            "TIMERCTL_REDIS_URL": "redis://redis:6379/0",
        }
    api = roles["api"]["command"]
    assert api[api.index("--host") + 1] == "0.0.0.0" and api[api.index("--port") + 1] == "3000"
    assert roles["api"]["ports"] == ["3000:3000"]
    assert "ports" not in roles["runner"], "a published port would stop `--scale runner=3`"


def compose_command() -> list[str]:
    """``docker compose`` (the plugin) or the standalone ``docker-compose``; skips without either."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip(
        "no compose implementation: `docker compose` (plugin) is not installed and neither is `docker-compose` "
        "(Debian: apt-get install docker-compose)"
    )


def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"kafka", "mongo", "redis", *ROLES}
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], name
    assert services["runner"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["api"]["healthcheck"]["test"] != services["runner"]["healthcheck"]["test"]


def test_dockerfile_image() -> None:
    assert docker_instruction("FROM") == "python:3.11-slim"
    user = docker_instruction("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    assert json.loads(docker_instruction("ENTRYPOINT")) == ["timerctl"]
    assert json.loads(docker_instruction("CMD")) == ["serve", "runner"] == compose()["services"]["runner"]["command"]
    installs = [args for instruction, args in dockerfile() if instruction == "RUN" and "pip install" in args]
    assert installs and all("--no-cache-dir" in args for args in installs)
    # What the build copies exists, and .dockerignore lets it into the context.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for instruction, args in dockerfile():
        if instruction == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source


def healthcheck_argv() -> list[str]:
    args = docker_instruction("HEALTHCHECK")
    assert " CMD [" in f" {args}", args
    return list(json.loads(args[args.index("CMD") + 3 :]))


def test_image_health_check_runs_locally(tmp_path: Path) -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["timerctl", "doctor"]
    done = subprocess.run(local_argv(argv), env=process_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(part["ok"] for part in json.loads(done.stdout).values())


def test_image_health_check_fails_when_a_backend_is_down(tmp_path: Path, dead_redis_url: str) -> None:
    env = process_env(tmp_path, redis_url=dead_redis_url)
    done = subprocess.run(local_argv(healthcheck_argv()), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr


def test_compose_runner_command_runs_locally(
    tmp_path: Path, notify_socket: NotifySocket, daemon_procs: list[Daemon]
) -> None:
    runner = compose()["services"]["runner"]
    argv = json.loads(docker_instruction("ENTRYPOINT")) + runner["command"]
    env = {**process_env(tmp_path), "NOTIFY_SOCKET": notify_socket.address}
    for name, value in runner["environment"].items():
        assert name in COMPOSE_TO_LOCAL, f"no local equivalent for {name}={value} in the compose file"
        if COMPOSE_TO_LOCAL[name] is not None:
            env[name] = str(COMPOSE_TO_LOCAL[name])
    daemon_procs.append(Daemon(local_argv(argv), env, tmp_path / "runner.log"))
    check_lifecycle(daemon_procs[-1], notify_socket, watchdog=False)


def api_probe(port: int) -> list[str]:
    """The api service's health check, aimed at ``port`` on this machine instead of 3000."""
    test = list(compose()["services"]["api"]["healthcheck"]["test"])
    assert test[:3] == ["CMD", "python", "-c"]
    return [sys.executable, "-c", test[3].replace("127.0.0.1:3000", f"127.0.0.1:{port}")]


def test_api_health_check_probe(receiver: Receiver) -> None:
    # Nothing listens on a closed port: the probe fails. (The receiver answers POSTs only, so GET fails too.)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert subprocess.run(api_probe(closed), capture_output=True, timeout=30).returncode != 0
    assert subprocess.run(api_probe(receiver.port), capture_output=True, timeout=30).returncode != 0


def test_api_health_check_against_the_api(tmp_path: Path, daemon_procs: list[Daemon]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [TIMERCTL, "serve", "api", "--host", "127.0.0.1", "--port", str(port)]
    daemon_procs.append(api := Daemon(argv, process_env(tmp_path), tmp_path / "api.log"))
    deadline = time.monotonic() + 30
    while subprocess.run(api_probe(port), capture_output=True, timeout=30).returncode != 0:
        assert api.proc.poll() is None and time.monotonic() < deadline, api.tail()
        time.sleep(0.2)
    assert api.terminate() == 0, api.tail()
