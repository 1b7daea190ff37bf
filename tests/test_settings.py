"""Settings: every STREAMS_* variable, durations, the retention cap, errors naming the variable."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import ConfigError
from streams.settings import MAX_RETENTION, Settings, format_duration, parse_duration

pytestmark = pytest.mark.unit


def test_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.app_id == "streams-join"
    assert settings.topic_prefix == ""
    assert settings.partitions == 8
    assert settings.retention == timedelta(days=90)
    assert dict(settings.retention_by_application) == {}
    assert settings.pending_ttl == timedelta(days=1)
    assert settings.data_dir == Path("./streams-data")
    assert settings.web_port == 6066
    assert settings.max_record_bytes == 1_000_000
    assert settings.processing_guarantee == "at_least_once"
    assert settings.log_level == "INFO"
    assert settings.flush_timeout == timedelta(seconds=30)
    assert settings.session_timeout == timedelta(seconds=45)


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "STREAMS_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:19092",
        "STREAMS_APP_ID": "join-prod.v2",
        "STREAMS_TOPIC_PREFIX": "prod.",
        "STREAMS_PARTITIONS": "12",
        "STREAMS_RETENTION": "30d",
        "STREAMS_RETENTION_BY_APPLICATION": "chat=7d, loans=45d",
        "STREAMS_PENDING_TTL": "12h",
        "STREAMS_DATA_DIR": str(tmp_path / "state"),
        "STREAMS_WEB_PORT": "7070",
        "STREAMS_MAX_RECORD_BYTES": "2048",
        "STREAMS_PROCESSING_GUARANTEE": "exactly_once",
        "STREAMS_EXPIRED_MEMORY": "2d",
        "STREAMS_WEB_HOST": "0.0.0.0",
        "STREAMS_LOG_LEVEL": "debug",
        "STREAMS_FLUSH_TIMEOUT": "5s",
        "STREAMS_SESSION_TIMEOUT": "10s",
    }

    settings = Settings.from_env(env)
    # Every setting was given, and every one took the value given, not its default.
    assert set(env) == set(VARIABLES)
    defaults = Settings()
    unread = [
        f.name
        for f in fields(Settings)
        if f.name not in NESTED and getattr(settings, f.name) == getattr(defaults, f.name)
    ]
    assert unread == []

    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:19092"
    assert settings.app_id == "join-prod.v2"
    assert settings.topic_prefix == "prod."
    assert settings.partitions == 12
    assert settings.retention == timedelta(days=30)
    assert dict(settings.retention_by_application) == {
        "chat": timedelta(days=7),
        "loans": timedelta(days=45),
    }
    assert settings.pending_ttl == timedelta(hours=12)
    assert settings.data_dir == tmp_path / "state"
    assert settings.web_port == 7070
    assert settings.max_record_bytes == 2048
    assert settings.processing_guarantee == "exactly_once"
    assert settings.expired_memory == timedelta(days=2)
    assert settings.web_host == "0.0.0.0"
    assert settings.log_level == "DEBUG"
    assert settings.flush_timeout == timedelta(seconds=5)
    assert settings.session_timeout == timedelta(seconds=10)
    assert settings.topic("joined") == "prod.joined"
    assert settings.retention_for("chat") == timedelta(days=7)
    assert settings.retention_for("search") == timedelta(days=30)
    assert settings.longest_retention == timedelta(days=45)


def test_from_env_reads_os_environ(clean_environ: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMS_PARTITIONS", "3")
    monkeypatch.setenv("STREAMS_APP_ID", "from-environ")

    settings = Settings.from_env()

    assert (settings.partitions, settings.app_id) == (3, "from-environ")


def test_blank_values_mean_the_default() -> None:
    names = ["STREAMS_APP_ID", "STREAMS_PARTITIONS", "STREAMS_RETENTION", "STREAMS_WEB_PORT"]

    assert Settings.from_env(dict.fromkeys(names, "  ")) == Settings()


def test_processing_guarantee_ignores_case() -> None:
    settings = Settings.from_env({"STREAMS_PROCESSING_GUARANTEE": "Exactly_Once"})

    assert settings.processing_guarantee == "exactly_once"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("3s", timedelta(seconds=3)),
        ("5m", timedelta(minutes=5)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        ("45", timedelta(seconds=45)),
        ("1.5", timedelta(seconds=1.5)),
        ("0.5d", timedelta(hours=12)),
        (" 7 d ", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [("STREAMS_RETENTION", "retention"), ("STREAMS_PENDING_TTL", "pending_ttl")],
)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("3s", timedelta(seconds=3)),
        ("5m", timedelta(minutes=5)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("600", timedelta(minutes=10)),
    ],
)
def test_duration_variables_take_every_unit(
    variable: str, attribute: str, text: str, expected: timedelta
) -> None:
    assert getattr(Settings.from_env({variable: text}), attribute) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=90), "90d"),
        (timedelta(hours=12), "12h"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=3), "3s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(hours=36), "36h"),
        (timedelta(seconds=61), "61s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.integers(min_value=1, max_value=10_000 * 86_400_000))
def test_format_then_parse_duration_is_identity(ms: int) -> None:
    value = timedelta(milliseconds=ms)

    assert parse_duration(format_duration(value)) == value


@given(
    st.integers(min_value=1, max_value=1_000_000),
    st.sampled_from(["ms", "s", "m", "h", "d"]),
)
def test_parse_then_format_duration_keeps_the_value(number: int, unit: str) -> None:
    value = parse_duration(f"{number}{unit}")

    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("STREAMS_RETENTION", "100d", "STREAMS_RETENTION"),
        ("STREAMS_RETENTION", "2161h", "STREAMS_RETENTION"),
        ("STREAMS_RETENTION_BY_APPLICATION", "chat=7d,audit=120d", "(audit)"),
    ],
)
def test_retention_over_90_days_is_refused_naming_the_variable(
    variable: str, value: str, named: str
) -> None:
    # Refused, not clamped: a retention over the cap is a mistake the user should see.
    with pytest.raises(ConfigError, match="over the 90-day maximum") as raised:
        Settings.from_env({variable: value})

    assert raised.value.variable.startswith(variable)
    assert named in str(raised.value)


def test_retention_of_exactly_90_days_is_kept() -> None:
    settings = Settings.from_env(
        {"STREAMS_RETENTION": "90d", "STREAMS_RETENTION_BY_APPLICATION": "chat=7d,audit=2160h"}
    )

    assert settings.retention == MAX_RETENTION == timedelta(days=90)
    assert settings.retention_for("audit") == MAX_RETENTION
    assert settings.longest_retention == MAX_RETENTION


def test_an_application_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="'chat' is listed twice") as raised:
        Settings.from_env({"STREAMS_RETENTION_BY_APPLICATION": "chat=7d,loans=3d, chat =1d"})

    assert raised.value.variable == "STREAMS_RETENTION_BY_APPLICATION"


def test_retention_just_under_the_cap_is_kept() -> None:
    settings = Settings.from_env(
        {"STREAMS_RETENTION": "2159h", "STREAMS_RETENTION_BY_APPLICATION": "chat=89d"}
    )

    assert settings.retention == timedelta(hours=2159)
    assert settings.retention_for("chat") == timedelta(days=89)


def test_longest_retention_may_come_from_an_application() -> None:
    settings = Settings.from_env(
        {"STREAMS_RETENTION": "1d", "STREAMS_RETENTION_BY_APPLICATION": "a=3d,b=2d"}
    )

    assert settings.longest_retention == timedelta(days=3)


# Every variable the settings read: one per field of `Settings`, named after it, so a
# setting added later is covered by the tests that use this list.
# `security` holds its own variables (`streams.security.VARIABLES`, tests/test_security.py).
NESTED = {"security"}
VARIABLES = tuple(f"STREAMS_{f.name.upper()}" for f in fields(Settings) if f.name not in NESTED)


BAD_VALUES = [
    ("STREAMS_BOOTSTRAP_SERVERS", "localhost"),
    ("STREAMS_BOOTSTRAP_SERVERS", ":9092"),
    ("STREAMS_BOOTSTRAP_SERVERS", "localhost:port"),
    ("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092,"),
    ("STREAMS_BOOTSTRAP_SERVERS", "localhost:99999"),
    ("STREAMS_BOOTSTRAP_SERVERS", "localhost:0"),
    ("STREAMS_APP_ID", "my app"),
    ("STREAMS_APP_ID", "app/1"),
    ("STREAMS_APP_ID", "äpp"),
    ("STREAMS_TOPIC_PREFIX", "a prefix"),
    ("STREAMS_TOPIC_PREFIX", "team/"),
    ("STREAMS_TOPIC_PREFIX", "p" * 201),
    ("STREAMS_PARTITIONS", "0"),
    ("STREAMS_PARTITIONS", "-1"),
    ("STREAMS_PARTITIONS", "eight"),
    ("STREAMS_PARTITIONS", "2.5"),
    ("STREAMS_PARTITIONS", "10001"),
    ("STREAMS_RETENTION", "0"),
    ("STREAMS_RETENTION", "0d"),
    ("STREAMS_RETENTION", "-1d"),
    ("STREAMS_RETENTION", "7 days"),
    ("STREAMS_RETENTION", "1w"),
    ("STREAMS_RETENTION", "1e3"),
    ("STREAMS_RETENTION", "d"),
    ("STREAMS_RETENTION", "0.0001ms"),
    ("STREAMS_RETENTION", "9999999999d"),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat"),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat=7d,loans"),
    ("STREAMS_RETENTION_BY_APPLICATION", "=7d"),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat="),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat=7x"),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat=0s"),
    ("STREAMS_PENDING_TTL", "0ms"),
    ("STREAMS_PENDING_TTL", "soon"),
    ("STREAMS_PENDING_TTL", "-5m"),
    ("STREAMS_PENDING_TTL", "5 m s"),
    ("STREAMS_WEB_HOST", "bad host!"),
    ("STREAMS_WEB_HOST", "http://x"),
    ("STREAMS_EXPIRED_MEMORY", "0s"),
    ("STREAMS_EXPIRED_MEMORY", "a day"),
    ("STREAMS_EXPIRED_MEMORY", "-1d"),
    ("STREAMS_WEB_PORT", "0"),
    ("STREAMS_WEB_PORT", "65536"),
    ("STREAMS_WEB_PORT", "http"),
    ("STREAMS_WEB_PORT", "-6066"),
    ("STREAMS_MAX_RECORD_BYTES", "1023"),
    ("STREAMS_MAX_RECORD_BYTES", "100000001"),
    ("STREAMS_MAX_RECORD_BYTES", "1MB"),
    ("STREAMS_PROCESSING_GUARANTEE", "exactly-once"),
    ("STREAMS_PROCESSING_GUARANTEE", "at_most_once"),
    ("STREAMS_PROCESSING_GUARANTEE", "eos"),
    ("STREAMS_RETENTION", "91d"),
    ("STREAMS_RETENTION_BY_APPLICATION", "chat=7d,chat=8d"),
    ("STREAMS_LOG_LEVEL", "verbose"),
    ("STREAMS_LOG_LEVEL", "20"),
    ("STREAMS_FLUSH_TIMEOUT", "0s"),
    ("STREAMS_FLUSH_TIMEOUT", "soon"),
    ("STREAMS_SESSION_TIMEOUT", "5s"),
    ("STREAMS_SESSION_TIMEOUT", "5999ms"),
    ("STREAMS_SESSION_TIMEOUT", "31m"),
    ("STREAMS_SESSION_TIMEOUT", "0s"),
    ("STREAMS_SESSION_TIMEOUT", "a minute"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_value_raises_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})

    assert variable in str(raised.value)
    assert raised.value.variable.startswith(variable)
    assert raised.value.reason == "config"


def test_every_variable_has_bad_values() -> None:
    # STREAMS_DATA_DIR's bad value needs a file on disk: its own test below.
    variables = {name for name, _ in BAD_VALUES} | {"STREAMS_DATA_DIR"}

    assert variables == set(VARIABLES)


def test_a_data_dir_that_is_a_file_raises_config_error(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")

    with pytest.raises(ConfigError, match="STREAMS_DATA_DIR"):
        Settings.from_env({"STREAMS_DATA_DIR": str(a_file)})


def test_a_missing_data_dir_is_fine(tmp_path: Path) -> None:
    settings = Settings.from_env({"STREAMS_DATA_DIR": str(tmp_path / "later")})

    assert settings.data_dir == tmp_path / "later"


def test_the_per_application_error_names_the_application() -> None:
    with pytest.raises(ConfigError, match=r"STREAMS_RETENTION_BY_APPLICATION \(loans\)"):
        Settings.from_env({"STREAMS_RETENTION_BY_APPLICATION": "chat=7d,loans=soon"})


def test_the_error_message_repeats_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="'twelve'"):
        Settings.from_env({"STREAMS_PARTITIONS": "twelve"})


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="STREAMS_WEB_PORT"):
        Settings.from_env({"STREAMS_WEB_PORT": "web"})


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("partitions", 1),
        ("retention", timedelta(days=1)),
        ("topic_prefix", "other."),
        ("bootstrap_servers", "elsewhere:9092"),
    ],
)
def test_settings_are_frozen(attribute: str, value: object) -> None:
    settings = Settings.from_env({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, attribute, value)
    assert settings == Settings()


def test_per_application_retention_cannot_be_changed() -> None:
    settings = Settings.from_env({"STREAMS_RETENTION_BY_APPLICATION": "chat=7d"})

    with pytest.raises(TypeError):
        settings.retention_by_application["chat"] = timedelta(days=90)  # type: ignore[index]
    assert settings.retention_for("chat") == timedelta(days=7)


def test_settings_are_hashable() -> None:
    env = {"STREAMS_RETENTION_BY_APPLICATION": "chat=7d"}

    assert hash(Settings.from_env(env)) == hash(Settings.from_env(env))
    assert len({Settings.from_env(env), Settings.from_env(env)}) == 1
