"""The package's rooms and layers, as the README's architecture section draws them.

Every ``import`` in ``instrument/`` (module level, inside functions and under
``TYPE_CHECKING`` alike) is read with ``ast``; a module may import its own room
and rooms of lower layers only, and no chain of imports may lead back to where
it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "instrument"

#: Lowest first. A room is a module prefix; the longest prefix that matches names a module's room.
LAYERS: list[list[str]] = [
    ["instrument.config", "instrument.types", "instrument._errors"],
    ["instrument.core"],
    ["instrument.storage"],
    ["instrument.core.runtime"],
    ["instrument.system", "instrument.logs", "instrument.exporters"],
    ["instrument.alerting"],
    ["instrument.dashboard"],
    ["instrument.adapters"],
    ["instrument"],  # the faces users import (instrument.wsgi, ...), startup, testing, cli, demo
]
ROOMS = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
ROOMS["instrument.demo"] = len(LAYERS) - 1
ROOMS["instrument.django"] = len(LAYERS) - 1  # a face that is a package (its urls module)
ROOMS["instrument.backends"] = len(LAYERS) - 1  # faces of storage and alert channels

#: Modules that a backend the flusher writes to must never import: a backend sees
#: batches, not requests, and is configured by whoever builds it.
BACKENDS = ("instrument.storage",)
NOT_FOR_BACKENDS = ("instrument.core.runtime", "instrument.adapters", "instrument.config")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """Every module of the package that ``module`` imports, by its full name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "instrument" or name.startswith("instrument."):
                target = _target(name)
                if target is not None and target != module:
                    found.add(target)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def room_of(module: str) -> str:
    best = "instrument"
    for room in ROOMS:
        if (module == room or module.startswith(room + ".")) and len(room) > len(best):
            best = room
    return best


def test_every_module_is_in_a_room_below_the_faces() -> None:
    """Each module of the package is found in a room of the table (the faces' room is the top)."""
    tops = [m for m in MODULES if room_of(m) == "instrument" and m.count(".") > 1]
    assert not tops, f"modules deep in the tree with no room of their own: {tops}"


def test_no_import_circles() -> None:
    """No module can reach itself by following imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_imports_follow_the_layers() -> None:
    """A module imports its own room or rooms of lower layers, never a higher or a sibling room."""
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        room = room_of(module)
        for target in sorted(targets):
            other = room_of(target)
            if other == room or ROOMS[other] < ROOMS[room]:
                continue
            nested = room.startswith(other + ".") or other.startswith(room + ".")
            if nested and ROOMS[other] == ROOMS[room]:  # demo and backends among the faces
                continue
            wrong.append(f"{module} ({room}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("forbidden", NOT_FOR_BACKENDS)
def test_backends_never_import_the_runtime_or_adapters(forbidden: str) -> None:
    """Storage backends get what they need from the batch and their constructor."""
    wrong = [f"{m} imports {t}" for m, targets in GRAPH.items() if m.startswith(BACKENDS)
             for t in targets if t == forbidden or t.startswith(forbidden + ".")]
    assert not wrong, wrong


def test_adapters_never_touch_storage() -> None:
    """Adapters only record samples; what becomes of them is the flusher's business."""
    wrong = [f"{m} imports {t}" for m, targets in GRAPH.items()
             if m.startswith("instrument.adapters") for t in targets
             if t.startswith("instrument.storage")]
    assert not wrong, wrong


def test_the_graph_reads_real_imports() -> None:
    """The walker sees relative, absolute and function-level imports (it could miss none)."""
    assert "instrument.core.buffer" in GRAPH["instrument.core.flusher"]
    assert "instrument.core.runtime" in GRAPH["instrument.adapters.wsgi"]
    assert "instrument.adapters.wsgi" in GRAPH["instrument.wsgi"]


def _batch_writes(path: Path) -> list[int]:
    """Lines where ``path`` hands a batch to some object's ``write`` (not ``super().write``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "write" and node.args
                and isinstance(node.args[0], ast.Name) and "batch" in node.args[0].id.lower()
                and not (isinstance(node.func.value, ast.Call)
                         and isinstance(node.func.value.func, ast.Name)
                         and node.func.value.func.id == "super")):
            lines.append(node.lineno)
    return lines


def test_only_the_flusher_calls_backends() -> None:
    """A batch reaches a backend from the flusher alone: retries, backoff and health live there."""
    writers = {m: lines for m, path in MODULES.items() if (lines := _batch_writes(path))}
    assert set(writers) == {"instrument.core.flusher"}, writers


#: The faces users import, and names each must keep (issue 18 promised them all).
FACES = {
    "instrument": ["configure", "timed", "timer", "stats", "shutdown", "ConfigError"],
    "instrument.wsgi": ["InstrumentMiddleware"],
    "instrument.asgi": ["InstrumentMiddleware"],
    "instrument.flask": ["Instrument"],
    "instrument.fastapi": ["InstrumentMiddleware", "instrument_app"],
    "instrument.django": ["InstrumentMiddleware", "get_asgi_application"],
    "instrument.django.urls": ["urlpatterns", "app_name"],
    "instrument.requests": ["instrument_session"],
    "instrument.celery": ["instrument_celery"],
    "instrument.decorators": ["timed", "timer"],
    "instrument.logs": ["setup_logging", "request_context", "JsonFormatter"],
    "instrument.logsearch": ["search_logs", "request_logs", "LogQueryError"],
    "instrument.queries": ["summary", "api_stats", "timeseries"],
    "instrument.alerting": ["get_alert_manager", "AlertRule", "AlertSeverity", "AlertManager"],
    "instrument.metrics_collector": ["get_metrics_collector", "MetricsCollector",
                                     "ApplicationMetrics"],
    "instrument.startup": ["initialize_monitoring_system", "start_monitoring_with_config"],
    "instrument.prometheus": [],
    "instrument.testing": [],
    "instrument.cli": ["main"],
    "instrument.backends.sqlite": ["SQLiteBackend"],
    "instrument.backends.postgresql": ["PostgreSQLBackend"],
    "instrument.backends.email": ["EmailChannel"],
    "instrument.backends.slack": ["SlackChannel"],
    "instrument.backends.webhook": ["WebhookChannel"],
    "instrument.backends.pagerduty": ["PagerDutyChannel"],
    "instrument.backends.alertmanager": ["AlertmanagerChannel"],
    "instrument.backends.log_channel": [],
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_public_faces_keep_their_names(face: str) -> None:
    """Moving a module behind a face must not move what users import from it."""
    import importlib

    module = importlib.import_module(face)
    missing = [n for n in FACES[face] if not hasattr(module, n)]
    assert not missing, f"{face} lost {missing}"
    for name in getattr(module, "__all__", ()):
        assert hasattr(module, name), f"{face}.__all__ names {name}, which is not there"
