"""The package's layers: lower layers never import upper ones, and no module imports in a circle.

Layers, lowest first:
0. the shared core: errors, clock, settings (and security), the Kafka client config, the record
   codec (and its plain checks), topics;
1. `streams.sdk` (what an application imports) and `streams.stats` (reading the aggregates);
2. `streams.worker` (may use `streams.stats` for its /stats page);
3. the entry points: `streams` itself, the command line and the demo.

Every import counts, also those under `if TYPE_CHECKING:` and inside functions: a
protocol in the lower module says what it needs of the upper one instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streams"
CORE = {
    "streams.errors",
    "streams.clock",
    "streams.settings",
    "streams.security",
    "streams.kafka_config",
    "streams.records",
    "streams.plain",
    "streams.topics",
    "streams.kafka_ping",
}
TOP = {"streams", "streams.cli", "streams.versions_cli", "streams.demo"}
# The codec, the settings and the join rules know nothing of the runtime or the clients.
PURE = {
    "streams.records",
    "streams.plain",
    "streams.settings",
    "streams.security",
    "streams.worker.join",
    "streams.worker.state",
    "streams.worker.feedback_stats",
}
RUNTIME = ("faust", "mode", "aiokafka", "confluent_kafka", "streams.sdk", "streams.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module in TOP:
        return 3
    if module in CORE:
        return 0
    if module.startswith(("streams.sdk", "streams.stats")):
        return 1
    if module.startswith("streams.worker"):
        return 2
    raise AssertionError(f"{module}: not in any layer; add it to tests/test_layers.py")


def imports_of(module: str) -> set[str]:
    """Every module `module` imports (resolved to modules of the package where it can)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module: {m for m in imports_of(module) if m in MODULES} for module in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_every_package_and_their_imports() -> None:
    assert {"streams.sdk.client", "streams.worker.app", "streams.stats.query"} <= set(MODULES)
    assert "streams.worker.join" in imports_of("streams.worker.state")
    assert "streams.stats.query" in imports_of("streams.worker.web")


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert upward == []


def part(module: str) -> str:
    return f"{module}..".split(".")[1]


def test_sdk_and_stats_do_not_import_each_other() -> None:
    crossing = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if {part(module), part(target)} == {"sdk", "stats"}
    ]
    assert crossing == []


def test_codec_settings_and_join_rules_know_nothing_of_the_runtime() -> None:
    leaks = [
        f"{module} imports {name}"
        for module in sorted(PURE)
        for name in imports_of(module)
        if name.startswith(RUNTIME)
        or (name.startswith("streams.worker") and name not in PURE and name != "streams.worker")
    ]
    assert leaks == []


def test_no_module_imports_in_a_circle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_benchmark_is_not_in_the_installed_package() -> None:
    assert not [m for m in MODULES if "bench" in m.rsplit(".", 1)[-1]]
