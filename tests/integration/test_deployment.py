"""docker-compose.yml, validated offline (no Docker engine here) against the compose
specification (the `compose-spec` package: a strict parser of the specification and its schema's
models), and checked for what the deployment promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from compose_spec import ComposeSpecification, PyCompose

from moecomm_tasks.matrix import load_matrix

ROOT = Path(__file__).parent.parent.parent
TEXT = (ROOT / "docker-compose.yml").read_text()


VARIABLE = re.compile(r"\$\{([A-Z_]+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ is a literal $."""
    def substitute(match: re.Match) -> str:
        name, operator, argument = match.groups()
        value = env.get(name, "")
        if operator and operator.endswith("-") and not value:
            return argument
        if operator and operator.endswith("?") and not value:
            raise AssertionError(f"{name} is required: {argument}")
        return value
    return VARIABLE.sub(substitute, text).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(TEXT)


def example_env() -> dict[str, str]:
    """.env.example with every empty secret filled in, as a user would."""
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value or ("secret-" + key.lower() if re.search("PASSWORD|SECRET|KEY", key) else "")
    return env


def test_valid_against_the_compose_specification():
    # Variables are substituted and YAML anchors and merge keys resolved first, as Compose does.
    resolved = yaml.safe_load(interpolate(TEXT, example_env()))
    parsed = PyCompose.from_json(json.dumps(resolved))
    assert set(parsed.service_names()) >= {"postgres", "redis", "airflow-init", "airflow-apiserver",
                                           "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
    ComposeSpecification.model_validate(resolved)


def test_a_missing_secret_is_refused():
    with pytest.raises(AssertionError, match="REDIS_PASSWORD is required"):
        interpolate(TEXT, {k: v for k, v in example_env().items() if k != "REDIS_PASSWORD"})


def test_the_parser_refuses_a_broken_file():
    broken = yaml.safe_load(interpolate(TEXT.replace("    image: postgres:18-bookworm", "    imagee: postgres:18-bookworm"),
                                        example_env()))
    with pytest.raises(Exception, match="imagee"):
        PyCompose.from_json(json.dumps(broken))


def test_celery_executor_and_shared_settings(compose):
    for name, service in compose["services"].items():
        if name.startswith(("airflow", "gpu-worker")):
            assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
            assert service["image"] == "${MOECOMM_IMAGE:-moecomm:latest}" and service["build"]["context"] == "."


def test_one_gpu_worker_per_node_queue_with_concurrency_1(compose):
    queues = load_matrix("h100-8gpu").queues
    workers = {name: s for name, s in compose["services"].items() if name.startswith("gpu-worker")}
    served = []
    for name, service in workers.items():
        command = service["command"]
        assert command[:3] == ["airflow", "celery", "worker"]
        assert command[command.index("--concurrency") + 1] == "1", name
        served.append(command[command.index("--queues") + 1])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert sorted(served) == sorted(queues)


def test_secrets_come_from_the_environment_and_are_documented(compose):
    referenced = set(re.findall(r"\$\{([A-Z_]+)", TEXT))
    documented = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#")}
    assert referenced <= documented, referenced - documented
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|FERNET", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"


def test_results_database_roles(compose):
    init = (ROOT / "sql" / "deploy" / "init-roles.sh").read_text()
    assert "CREATE ROLE moecomm_writer" in init and "CREATE ROLE moecomm_reader" in init
    assert "GRANT SELECT ON TABLES TO moecomm_reader" in init and "default_transaction_read_only" in init
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./sql/deploy/init-roles.sh:/docker-entrypoint-initdb.d/10-init-roles.sh:ro" in mounts
    assert "moecomm_writer" in compose["x-airflow-common"]["environment"]["MOECOMM_DATABASE_URL"]


def test_grafana_is_provisioned_from_the_repository(compose):
    grafana = compose["services"]["grafana"]
    for mount in grafana["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_dir(), f"{source} is mounted but missing"
    assert "./sql/deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    # The provider's path is where the dashboards are mounted; the home dashboard exists there.
    assert "./sql/deploy/grafana/dashboards:/var/lib/grafana/dashboards/moecomm:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "sql/deploy/grafana/dashboards" / Path(home).name).is_file()
    assert grafana["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_native_deployment_uses_the_same_variables(compose):
    """sql/deploy/native/services.env.example (the environment of run-service.sh) names the same
    variables as every Airflow service of docker-compose.yml, plus AIRFLOW_HOME (the image's)."""
    native = {line.split("=", 1)[0] for line in (ROOT / "sql/deploy/native/services.env.example").read_text().splitlines()
              if line and not line.startswith("#")}
    assert native == set(compose["x-airflow-common"]["environment"]) | {"AIRFLOW_HOME"}
    script = (ROOT / "sql/deploy/native/run-service.sh").read_text()
    # The same commands as the compose services run.
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["airflow"] and command[1] != "celery":
            assert f"{command[1]})" in script or f"|{command[1]}" in script or f"{command[1]}|" in script, name
    assert 'exec airflow celery worker --queues "$queues" --concurrency "$concurrency"' in script
    assert 'exec bash "$here/../airflow-init.sh"' in script
