"""The README says what the code does: its configuration table and its command reference."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.cli import _parser
from streams.settings import Settings

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


class RecordingEnv(dict[str, str]):
    """An empty environment that remembers every variable asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def variables_read() -> set[str]:
    env = RecordingEnv()
    Settings.from_env(env)
    return {name for name in env.asked if name.startswith("STREAMS_")}


def configuration_table() -> list[str]:
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(STREAMS_[A-Z_]+)` \|", section, flags=re.MULTILINE)


def test_the_configuration_table_lists_every_variable_the_settings_read() -> None:
    table = configuration_table()

    assert len(table) == len(set(table)), "a variable is listed twice"
    assert set(table) == variables_read()


def options(parser: argparse.ArgumentParser, command: str = "streams") -> Iterator[str]:
    """(`streams tail`, `--max`)-like pairs as `streams tail --max`, for every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{command} {name}"
                yield from options(sub, f"{command} {name}")
        elif action.option_strings and "--help" not in action.option_strings:
            yield f"{command} {action.option_strings[0]}"


def test_every_command_and_option_is_in_the_readme() -> None:
    missing = []
    for entry in options(_parser()):
        words = entry.split()
        command, last = " ".join(w for w in words if not w.startswith("-")), words[-1]
        mentioned = [line for line in README.splitlines() if command in line and last in line]
        if not mentioned:
            missing.append(entry)

    assert missing == []


def test_the_readme_shows_how_readers_end() -> None:
    assert re.search(r"consume_joined\([^)]*timeout=", README)
    assert re.search(r"streams tail \w+ [^\n]*--timeout", README)
    assert re.search(r"streams tail \w+ [^\n]*--max", README)
