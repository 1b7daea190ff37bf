"""docker-compose.yml (valid Compose, pinned Kafka, topics, two workers) and the Dockerfile."""

from __future__ import annotations

import copy
import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# The Compose Specification's JSON Schema, vendored (Apache-2.0, see tests/data/README.md).
COMPOSE_SPEC = ROOT / "tests" / "data" / "compose-spec.json"
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    spec = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    # The spec says draft-07 in a spelling jsonschema does not look up: name it.
    jsonschema.Draft7Validator.check_schema(spec)
    return jsonschema.Draft7Validator(spec)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings, from either Compose syntax."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Host port to container port, from the short or the long syntax."""
    ports: dict[int, int] = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports[int(port["published"])] = int(port["target"])
        else:
            *_, host, container = str(port).split(":")
            ports[int(host)] = int(container.split("/")[0])
    return ports


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def entrypoint() -> list[str]:
    (arguments,) = [args for keyword, args in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    parsed: list[str] = json.loads(arguments)
    return parsed


def effective_command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return entrypoint() + (shlex.split(command) if isinstance(command, str) else list(command))


def kafka_version() -> str:
    properties = (
        ET.parse(ROOT / "kafka" / "pom.xml")
        .getroot()
        .find("{http://maven.apache.org/POM/4.0.0}properties")
    )
    assert properties is not None
    version = properties.findtext("{http://maven.apache.org/POM/4.0.0}kafka.version")
    assert version, "kafka/pom.xml has no <kafka.version>"
    return version


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in compose_validator.iter_errors(compose)
    ]

    assert errors == []


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("kafka", "healthchek", {"test": ["CMD", "true"]}),
        ("worker-1", "depends_on", {"topics": {"condition": "service_done"}}),
        ("worker-2", "ports", "6067"),
    ],
)
def test_the_specification_catches_mistakes(
    compose: dict[str, Any],
    compose_validator: jsonschema.Draft7Validator,
    service: str,
    key: str,
    value: Any,
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"][service][key] = value

    assert list(compose_validator.iter_errors(broken))


def test_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "topics", *WORKERS}


def test_kafka_is_the_official_image_of_the_pinned_version(compose: dict[str, Any]) -> None:
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"


def test_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = environment(kafka)

    assert env["KAFKA_NODE_ID"] == "1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@")
    for setting in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_MIN_INSYNC_REPLICAS",
    ):
        assert env[setting] == "1", setting
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_answers_other_containers_and_the_host(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = environment(kafka)
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )

    assert "kafka:9092" in advertised.values()
    (host_listener,) = [
        name for name, address in advertised.items() if address.startswith("localhost:")
    ]
    host_port = int(advertised[host_listener].split(":")[1])
    assert host_port != 9092, "9092 on the host belongs to `make kafka-up`"
    assert published_ports(kafka) == {host_port: int(listeners[host_listener].split(":")[1])}
    assert set(advertised) <= set(listeners) <= set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised


def test_kafka_healthcheck_asks_the_broker(compose: dict[str, Any]) -> None:
    test = compose["services"]["kafka"]["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test

    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in command
    assert "--bootstrap-server" in command


def test_topics_is_a_one_shot_after_kafka_is_healthy(compose: dict[str, Any]) -> None:
    topics = compose["services"]["topics"]

    assert effective_command(topics) == ["streams", "topics", "create"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart", "no") == "no"
    assert environment(topics)["STREAMS_BOOTSTRAP_SERVERS"] == "kafka:9092"


@pytest.mark.parametrize("name", WORKERS)
def test_a_worker(compose: dict[str, Any], name: str) -> None:
    worker = compose["services"][name]
    env = environment(worker)

    assert effective_command(worker) == ["streams", "worker"]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "unless-stopped"
    assert env["STREAMS_BOOTSTRAP_SERVERS"] == "kafka:9092"
    web_port = int(env["STREAMS_WEB_PORT"])
    assert published_ports(worker) == {web_port: web_port}
    # The data dir lives on the worker's own volume, so a restart keeps its state.
    (mount,) = [volume for volume in worker["volumes"] if isinstance(volume, str)]
    source, target = mount.split(":")[:2]
    assert source in compose["volumes"]
    assert Path(env["STREAMS_DATA_DIR"]).is_relative_to(target)


def test_workers_share_the_app_id_and_nothing_else(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envs = [environment(services[name]) for name in WORKERS]
    volumes = [services[name]["volumes"][0].split(":")[0] for name in WORKERS]

    assert envs[0]["STREAMS_APP_ID"] == envs[1]["STREAMS_APP_ID"]
    assert envs[0]["STREAMS_DATA_DIR"] != envs[1]["STREAMS_DATA_DIR"]
    assert envs[0]["STREAMS_WEB_PORT"] != envs[1]["STREAMS_WEB_PORT"]
    assert volumes[0] != volumes[1]
    assert {int(env["STREAMS_WEB_PORT"]) for env in envs} == {6066, 6067}
    assert services[WORKERS[0]]["image"] == services[WORKERS[1]]["image"]


@pytest.mark.parametrize("name", ["topics", *WORKERS])
def test_streams_settings_in_compose_are_valid(compose: dict[str, Any], name: str) -> None:
    env = environment(compose["services"][name])

    settings = Settings.from_env(env)

    assert settings.bootstrap_servers == "kafka:9092"


@pytest.mark.parametrize("name", ["topics", *WORKERS])
def test_streams_services_are_built_from_the_repository(compose: dict[str, Any], name: str) -> None:
    build = compose["services"][name]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")

    assert (COMPOSE.parent / context).resolve() == ROOT
    assert (ROOT / context / dockerfile).resolve() == (ROOT / "Dockerfile").resolve()
    assert (ROOT / "Dockerfile").is_file()


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]

    assert [args for keyword, args in instructions if keyword == "FROM"] == ["python:3.11-slim"]
    assert entrypoint() == ["streams"]
    installs = [
        args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
    ]
    assert installs, "the Dockerfile installs the project with pip"
    assert all("[" not in args for args in installs), "no extras (test, lint) in the image"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as a user of its own"
    assert users[-1] not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {".git", ".venv", ".kafka"} <= ignored
    # What the wheel is built from must stay in.
    assert not ignored & {"streams", "schemas", "pyproject.toml", "README.md"}


# -- the secured variant: docker-compose.secure.yml over docker-compose.yml -------------

SECURE = ROOT / "docker-compose.secure.yml"
STREAMS_SERVICES = ("topics", *WORKERS)


def merged(base: Any, override: Any, key: str = "") -> Any:
    """What `docker compose -f base -f override` sees: maps merge, most lists are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            out[name] = merged(base[name], value, name) if name in base else value
        return out
    if isinstance(base, list) and isinstance(override, list) and key in {"secrets", "ports"}:
        return base + [item for item in override if item not in base]
    return override


@pytest.fixture(scope="module")
def secure(compose: dict[str, Any]) -> dict[str, Any]:
    override = yaml.safe_load(SECURE.read_text(encoding="utf-8"))
    return {"override": override, "merged": merged(compose, override)}


@pytest.mark.parametrize("which", ["override", "merged"])
def test_secure_variant_follows_the_compose_specification(
    secure: dict[str, Any], compose_validator: jsonschema.Draft7Validator, which: str
) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in compose_validator.iter_errors(secure[which])
    ]

    assert errors == []


def test_secure_kafka_speaks_only_sasl_ssl_to_clients(secure: dict[str, Any]) -> None:
    kafka = secure["merged"]["services"]["kafka"]
    env = environment(kafka)
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    advertised = [item.split("://")[0] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]

    assert {protocols[name] for name in advertised} == {"SASL_SSL"}
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert "/run/secrets/kafka_jaas" in env["KAFKA_OPTS"]
    for setting in ("KAFKA_SSL_KEYSTORE_LOCATION", "KAFKA_SSL_TRUSTSTORE_LOCATION"):
        assert env[setting].removeprefix("/run/secrets/") in kafka["secrets"]
    test = kafka["healthcheck"]["test"]
    assert (
        test[test.index("--command-config") + 1].removeprefix("/run/secrets/") in kafka["secrets"]
    )


@pytest.mark.parametrize("name", STREAMS_SERVICES)
def test_secure_streams_services_read_their_password_from_a_secret(
    secure: dict[str, Any], name: str, tmp_path: Path
) -> None:
    service = secure["merged"]["services"][name]
    env = environment(service)
    declared = secure["merged"]["secrets"]

    assert env["STREAMS_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert "STREAMS_SASL_PASSWORD" not in env, "a password in the environment shows in inspect"
    for variable in ("STREAMS_SASL_PASSWORD_FILE", "STREAMS_SSL_CA_LOCATION"):
        secret = env[variable].removeprefix("/run/secrets/")
        assert secret in service["secrets"]
        assert declared[secret]["file"].startswith("./secrets/")
    # The settings are a valid combination once the secrets are mounted.
    (tmp_path / "password").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    mounted = {
        **env,
        "STREAMS_SASL_PASSWORD_FILE": str(tmp_path / "password"),
        "STREAMS_SSL_CA_LOCATION": str(tmp_path / "ca.pem"),
    }
    assert Settings.from_env(mounted).security.protocol == "SASL_SSL"


def test_secrets_stay_out_of_git_and_of_the_image() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    docker_ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()

    assert "secrets/" in ignored
    assert "secrets" in docker_ignored


@pytest.mark.parametrize("name", WORKERS)
def test_worker_pages_listen_in_the_container_but_publish_on_loopback(
    compose: dict[str, Any], name: str
) -> None:
    worker = compose["services"][name]

    assert environment(worker)["STREAMS_WEB_HOST"] == "0.0.0.0"
    assert all(str(port).startswith("127.0.0.1:") for port in worker["ports"])
