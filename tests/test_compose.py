"""docker-compose.flux.yml, Dockerfile and .env.example checked against what the code reads.

There is no Docker engine here, so these tests are the deployment's safety net: every service,
image, command, dependency, health check and environment variable is cross-checked with the
package (CLI commands, modules, settings), and ``docker compose config`` parses the file when a
compose CLI is installed (skipped otherwise)."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.flux.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the workflows package, as PYTHONPATH=/app does in the image

FLUX_SERVICES = {"migrate", "worker", "flower", "consumer", "producer"}
ALL_SERVICES = FLUX_SERVICES | {"rabbitmq", "postgres"}
#: Variables read by the images themselves, not by our code.
IMAGE_VARS = {
    "RABBITMQ_DEFAULT_USER",
    "RABBITMQ_DEFAULT_PASS",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "PYTHONPATH",
}
CLI_MAIN = "import sys; from fluxcelery.cli import main; sys.exit(main(sys.argv[1:]))"
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``$$`` escapes)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg or ""
        raise AssertionError(f"${{{name}}} is not set: {arg}")

    return VAR_REF.sub(sub, value).replace("$$", "$")


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def code_files() -> str:
    """Every source file a container runs: the package, celeryconfig.py and workflows/."""
    files = [*ROOT.joinpath("fluxcelery").rglob("*.py"), ROOT / "celeryconfig.py"]
    files += ROOT.joinpath("workflows").rglob("*.py")
    return "\n".join(p.read_text() for p in files)


# -- services, images, dependencies ----------------------------------------------------------
def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert set(services) == ALL_SERVICES


def test_images(services: dict[str, Any]) -> None:
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management"
    assert services["postgres"]["image"] == "postgres:16"
    for name in FLUX_SERVICES:
        svc = services[name]
        assert svc["image"] == "fluxcelery:local", name
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).exists(), name


def test_dependencies_wait_for_health_and_migration(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health check"
            else:
                assert condition == "service_completed_successfully" and dep == "migrate"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "flower", "consumer"):
        dep = services[name]["depends_on"]
        assert dep["migrate"] == {"condition": "service_completed_successfully"}, name
        assert dep["rabbitmq"] == {"condition": "service_healthy"}, name
    assert services["producer"]["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name == "migrate":
            assert "healthcheck" not in svc  # a one-shot job: its exit code is its health
            continue
        check = svc["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval") and check.get("retries"), name
        if check["test"][:3] == ["CMD", "python", "-c"]:
            compile(check["test"][3], f"{name} healthcheck", "exec")


def test_health_checks_match_the_ports_and_paths_served(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert "--port=5555" in command(flower)
    assert "http://127.0.0.1:5555/healthcheck" in flower["healthcheck"]["test"][3]
    producer = services["producer"]
    cmd = command(producer)
    assert cmd[cmd.index("--port") + 1] == "8000"
    assert "http://127.0.0.1:8000/healthz" in producer["healthcheck"]["test"][3]
    consumer = services["consumer"]
    health_file = consumer["environment"]["FLUX_INGRESS_HEALTH_FILE"]
    assert repr(health_file) in consumer["healthcheck"]["test"][3]
    worker_check = services["worker"]["healthcheck"]["test"][1]
    assert "celery -A fluxcelery inspect ping" in worker_check
    # Escaped, so the container's HOSTNAME is used, not the host's at `compose up`.
    assert '"celery@$${HOSTNAME}"' in worker_check


def test_ports_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


# -- commands ---------------------------------------------------------------------------------
def cli_command(args: list[str]) -> Any:
    """The click command ``fluxcelery ARGS`` names, or None."""
    from fluxcelery.cli import cli

    node: Any = cli
    for word in args:
        if word.startswith("-"):
            break
        commands = getattr(node, "commands", None)
        if commands is None:
            break
        if word not in commands:
            return None
        node = commands[word]
    return node


def test_commands_name_real_cli_commands_and_modules(services: dict[str, Any]) -> None:
    assert command(services["migrate"])[:3] == ["fluxcelery", "db", "upgrade"]
    assert cli_command(["db", "upgrade"]) is not None
    assert command(services["flower"])[:2] == ["fluxcelery", "flower"]
    assert cli_command(["flower"]) is not None
    assert command(services["worker"])[:4] == ["celery", "-A", "fluxcelery", "worker"]
    import fluxcelery

    assert fluxcelery.app.main == "fluxcelery"  # what `celery -A fluxcelery` loads
    uvicorn_cmd = command(services["producer"])
    assert uvicorn_cmd[0] == "uvicorn"
    module, _, attr = uvicorn_cmd[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_consumer_command_parses(services: dict[str, Any]) -> None:
    from fluxcelery.cli.consume import _parser

    cmd = command(services["consumer"])
    assert cmd[:2] == ["fluxcelery", "consume"]
    args = _parser().parse_args(cmd[2:])
    assert (args.queue, args.workflow) == ("orders.workflow", "order-fulfillment")


def test_fluxcelery_consume_is_wired_in_the_cli() -> None:
    assert cli_command(["consume"]) is not None
    result = subprocess.run(
        [sys.executable, "-c", CLI_MAIN, "consume", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--queue" in result.stdout and "--workflow" in result.stdout


# -- environment ------------------------------------------------------------------------------
def all_environment(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {name: dict(svc.get("environment") or {}) for name, svc in services.items()}


def test_every_variable_set_is_read_by_the_code(services: dict[str, Any]) -> None:
    source = code_files()
    for name, env in all_environment(services).items():
        for var in env:
            if var in IMAGE_VARS or var.startswith(("RABBITMQ_", "POSTGRES_")):
                assert name in ("rabbitmq", "postgres") or var == "PYTHONPATH", (name, var)
                continue
            assert f'"{var}"' in source, f"{name}: {var} is set but no code reads it"


def test_flux_settings_are_complete(services: dict[str, Any]) -> None:
    env = env_example()
    for name in FLUX_SERVICES:
        svc_env = {k: interpolate(str(v), env) for k, v in services[name]["environment"].items()}
        for var in ("FLUX_BROKER_URL", "FLUX_DATABASE_URL", "FLUX_WORKFLOWS", "PYTHONPATH"):
            assert svc_env.get(var), f"{name} lacks {var}"
        broker = urlsplit(svc_env["FLUX_BROKER_URL"])
        assert broker.scheme == "amqp" and broker.hostname == "rabbitmq"
        assert (broker.username, broker.password) == (
            env["RABBITMQ_USER"],
            env["RABBITMQ_PASSWORD"],
        )
        database = urlsplit(svc_env["FLUX_DATABASE_URL"])
        assert database.scheme == "postgresql+psycopg" and database.hostname == "postgres"
        assert database.path == "/" + env["POSTGRES_DB"]
        assert svc_env["PYTHONPATH"] == "/app"


def test_settings_module_reads_what_compose_sets(services: dict[str, Any], monkeypatch) -> None:
    env = env_example()
    for var, value in services["worker"]["environment"].items():
        monkeypatch.setenv(var, interpolate(str(value), env))
    from fluxcelery.settings import load_settings

    settings = load_settings()
    assert settings.broker_url.startswith("amqp://") and "@rabbitmq:5672" in settings.broker_url
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.workflows == (
        "workflows.order",
        "workflows.approval",
        "workflows.saga",
        "workflows.onboarding",
    )


def test_workflow_modules_import_and_register(services: dict[str, Any]) -> None:
    from fluxcelery.core.builder import registered_workflows

    modules = services["worker"]["environment"]["FLUX_WORKFLOWS"].split(",")
    for module in modules:
        importlib.import_module(module)
    known = registered_workflows()
    ingress = services["consumer"]["environment"]["FLUX_INGRESS_WORKFLOW"]
    assert ingress in known
    assert {"order-fulfillment", "purchase-approval", "trip-booking", "user-onboarding"} <= set(
        known
    )
    for name in ("order-fulfillment", "purchase-approval", "trip-booking", "user-onboarding"):
        known[name].describe()  # a complete, valid definition


def test_env_example_defines_every_variable_used() -> None:
    text = COMPOSE.read_text()
    used = {m.group(1) for m in VAR_REF.finditer(text)}
    defined = env_example()
    assert used, "no ${VAR} found: the parser is broken"
    missing = sorted(used - set(defined))
    assert not missing, f".env.example lacks {missing}"
    assert all(defined[v] for v in used), "every variable has a value in .env.example"
    required = {m.group(1) for m in VAR_REF.finditer(text) if m.group(2) == ":?"}
    assert {"RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_PASSWORD"} <= required


def test_secrets_stay_out_of_the_image() -> None:
    ignored = ROOT.joinpath(".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored


# -- Dockerfile -------------------------------------------------------------------------------
def test_dockerfile_installs_the_extras_the_services_use() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    install = re.search(r'pip install "\.\[([a-z,]+)\]"', text)
    assert install, "the Dockerfile installs the package with extras"
    extras = set(install.group(1).split(","))
    assert extras == {"postgres", "flower", "http"}
    declared = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras <= set(declared)
    assert any(d.startswith("uvicorn") for d in declared["http"])
    for copied in ("fluxcelery", "workflows", "celeryconfig.py", "pyproject.toml", "README.md"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), copied
    assert "PYTHONPATH=/app" in text and re.search(r"^WORKDIR /app$", text, re.M)
    assert re.search(r"^USER \w+", text, re.M), "the services do not run as root"


# -- the real compose parser, when one is installed ------------------------------------------
def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_parses(tmp_path: Path) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (docker compose / docker-compose) installed")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "Cannot connect to the Docker daemon" in result.stderr:
        pytest.skip("the compose CLI refuses to work without an engine")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == ALL_SERVICES
    assert "change-me-flower" in " ".join(rendered["services"]["flower"]["command"])


def rabbitmq_conf(services: dict[str, Any]) -> dict[str, str]:
    """The RabbitMQ settings the compose file mounts into ``conf.d`` (``key = value`` lines)."""
    mounts = [v for v in services["rabbitmq"]["volumes"] if "/etc/rabbitmq/conf.d/" in v]
    assert mounts, "the rabbitmq service mounts no conf.d file"
    settings: dict[str, str] = {}
    for mount in mounts:
        source, target, *mode = mount.split(":")
        assert target.startswith("/etc/rabbitmq/conf.d/") and target.endswith(".conf")
        assert mode == ["ro"], mount
        for line in (ROOT / source).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings[key.strip()] = value.strip()
    return settings


def test_rabbitmq_lets_every_step_of_the_stack_hold_its_message(
    services: dict[str, Any],
) -> None:
    """A step task holds its message while it runs (acks late) and a delayed message until
    it is due: past ``consumer_timeout`` RabbitMQ closes the worker's channel. The stack's
    consumer_timeout covers the longest step of the workflows it runs, and the longest hold
    of a delayed message."""
    from fluxcelery import Workflow
    from fluxcelery.celery.tasks import HARD_LIMIT_MARGIN
    from fluxcelery.settings import Settings

    consumer_timeout_s = int(rabbitmq_conf(services)["consumer_timeout"]) / 1000
    assert consumer_timeout_s > Settings().max_countdown
    checked = 0
    for module in services["worker"]["environment"]["FLUX_WORKFLOWS"].split(","):
        defined = vars(importlib.import_module(module)).values()
        for wf in (v for v in defined if isinstance(v, Workflow)):
            for step in wf.describe()["steps"]:
                timeout = Settings().default_timeout if step["timeout_default"] else step["timeout"]
                name = f"{wf.name}.{step['name']}"
                assert timeout is not None, f"{name} has no timeout"
                assert timeout + HARD_LIMIT_MARGIN < consumer_timeout_s, name
                checked += 1
    assert checked >= 10
