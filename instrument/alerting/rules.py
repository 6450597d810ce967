"""Alert rules as data: a condition (callable or threshold) plus timing and policy.

A condition is either the seed's callable over the metrics dict
(``{'system': {...}, 'api': {...}, 'app': {...}}``) or a declarative
:class:`Threshold` (``metric``, operator, value) that can also come from
configuration. Thresholds are the fast, inspectable path: a missing metric is
"no data" (handled by the rule's policy), not a silent zero.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instrument.alerting.state import AlertSeverity

__all__ = [
    "DEFAULT_RULE_NAMES",
    "AlertRule",
    "Threshold",
    "check",
    "default_rules",
    "rules_from_json",
]

Metrics = Mapping[str, Any]
Condition = Callable[[Metrics], Any]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
NO_DATA_POLICIES = ("ok", "alerting", "keep")


@dataclass(frozen=True)
class Threshold:
    """``metric op value``, e.g. ``Threshold("api.error_rate_percent", ">", 10)``."""

    metric: str
    op: str
    value: float
    path: tuple[str, ...] = field(init=False, repr=False, compare=False)
    compare: Callable[[Any, Any], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"Unknown operator {self.op!r}; use one of {sorted(_OPS)}.")
        path = tuple(self.metric.split("."))
        if len(path) < 2 or not all(path):
            raise ValueError(f"Metric {self.metric!r} must look like 'api.error_rate_percent'.")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "compare", _OPS[self.op])

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Read ``"api.error_rate_percent > 10"``."""
        parts = text.split()
        if len(parts) != 3:
            raise ValueError(f"Expected 'metric op value', got {text!r}.")
        return cls(parts[0], parts[1], float(parts[2]))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass
class AlertRule:
    """One alert rule (the seed's signature plus policy fields with safe defaults).

    ``threshold_duration``: seconds the condition must hold before firing.
    ``cooldown_period``: repeat interval while still firing (0: never repeat).
    ``no_data``: what a raising condition or a missing metric means: ``ok``,
    ``alerting`` or ``keep`` (leave the state as it is).
    ``flap_window`` / ``flap_threshold``: firing that often within the window
    marks the alert flapping; it then pages once and stays quiet until stable.
    """

    name: str
    description: str
    severity: AlertSeverity
    condition: Condition | Threshold | str
    threshold_duration: float = 0
    cooldown_period: float = 1800
    no_data: str = "keep"
    flap_window: float = 1800
    flap_threshold: int = 2
    send_resolved: bool = True
    enabled: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.condition, str):
            self.condition = Threshold.parse(self.condition)
        if isinstance(self.severity, str) and not isinstance(self.severity, AlertSeverity):
            self.severity = AlertSeverity(self.severity.lower())
        if self.no_data not in NO_DATA_POLICIES:
            raise ValueError(f"no_data must be one of {NO_DATA_POLICIES}, got {self.no_data!r}.")
        if not callable(self.condition) and not isinstance(self.condition, Threshold):
            raise TypeError("condition must be a callable over the metrics dict or a Threshold.")
        if self.threshold_duration < 0 or self.cooldown_period < 0 or self.flap_window < 0:
            raise ValueError("threshold_duration, cooldown_period and flap_window must be >= 0.")


def check(rule: AlertRule, metrics: Metrics) -> tuple[bool | None, float | None, str | None]:
    """Evaluate ``rule``: (met, value, error); ``met`` is None when there is no data."""
    cond = rule.condition
    if isinstance(cond, Threshold):
        node: Any = metrics
        for key in cond.path:
            try:
                node = node[key]
            except (KeyError, TypeError, IndexError):
                return None, None, f"metric {cond.metric} missing"
        if node is None or isinstance(node, bool) or not isinstance(node, (int, float)):
            return None, None, f"metric {cond.metric} is {node!r}, not a number"
        return cond.compare(node, cond.value), float(node), None
    if isinstance(cond, str):  # only if changed after construction
        return None, None, "condition is an unparsed string"
    try:
        result = cond(metrics)
    except Exception as exc:  # a user's condition must never stop the loop
        return None, None, f"condition raised {type(exc).__name__}: {exc}"
    if result is None:
        return None, None, "condition returned None"
    return bool(result), None, None


def default_rules(cooldown_period: float = 1800, flap_window: float = 1800) -> list[AlertRule]:
    """The seed's six default rules (its table's thresholds, severities and durations)."""
    def rule(name: str, description: str, severity: AlertSeverity, metric: str, op: str,
             value: float, duration: float) -> AlertRule:
        return AlertRule(name, description, severity, Threshold(metric, op, value), duration,
                         cooldown_period=cooldown_period, flap_window=flap_window)

    sev = AlertSeverity
    return [
        rule("high_cpu", "CPU usage above 80%", sev.HIGH, "system.cpu_percent", ">", 80, 300),
        rule("critical_memory", "Memory usage above 90%", sev.CRITICAL,
             "system.memory_percent", ">", 90, 180),
        rule("high_error_rate", "API error rate above 10%", sev.HIGH,
             "api.error_rate_percent", ">", 10, 300),
        rule("slow_responses", "Average response time above 5 s", sev.MEDIUM,
             "api.avg_response_time_ms", ">", 5000, 600),
        rule("low_disk_space", "Disk usage above 85%", sev.HIGH,
             "system.disk_usage_percent", ">", 85, 300),
        rule("system_down", "No API requests received", sev.CRITICAL,
             "api.request_count", "<=", 0, 900),
    ]


DEFAULT_RULE_NAMES = tuple(r.name for r in default_rules())

_RULE_KEYS = {"name", "description", "severity", "metric", "op", "value", "threshold_duration",
              "for", "cooldown_period", "no_data", "flap_window", "flap_threshold",
              "send_resolved", "enabled", "labels"}


def rules_from_json(raw: str, base: Mapping[str, AlertRule],
                    defaults: Mapping[str, Any]) -> list[AlertRule]:
    """Rules from a JSON list; an entry named like a rule in ``base`` tunes that rule.

    ``[{"name": "high_cpu", "value": 95}, {"name": "queue", "metric": "app.queue_size",
    "op": ">", "value": 100, "severity": "medium", "for": 300}]``. Raises ValueError
    with the entry's position on anything it cannot use.
    """
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Not valid JSON ({exc.msg} at position {exc.pos}).") from None
    except RecursionError:
        raise ValueError("Not usable JSON: nested too deeply.") from None
    if not isinstance(items, list):
        raise ValueError("Expected a JSON list of rule objects.")
    rules = []
    for i, item in enumerate(items):
        try:
            rules.append(_rule_from_dict(item, base, defaults))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"Rule #{i}: {exc}") from None
    return rules


def _rule_from_dict(item: Any, base: Mapping[str, AlertRule],
                    defaults: Mapping[str, Any]) -> AlertRule:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError("each rule must be an object with a string 'name'.")
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_RULE_KEYS)}.")
    item = dict(item)
    if "for" in item:
        item["threshold_duration"] = item.pop("for")
    old = base.get(item["name"])
    cond_keys = {k: item.pop(k) for k in ("metric", "op", "value") if k in item}
    if old is not None:
        if cond_keys:
            if not isinstance(old.condition, Threshold):
                raise ValueError(f"rule {old.name!r} has a callable condition.")
            merged = {"metric": old.condition.metric, "op": old.condition.op,
                      "value": old.condition.value, **cond_keys}
            item["condition"] = Threshold(merged["metric"], merged["op"],
                                          float(merged["value"]))
        return dataclasses.replace(old, **item)
    missing = {"metric", "op", "value"} - set(cond_keys)
    if missing or "severity" not in item:
        raise ValueError(f"new rule {item['name']!r} needs metric, op, value and severity.")
    item["condition"] = Threshold(cond_keys["metric"], cond_keys["op"], float(cond_keys["value"]))
    item.setdefault("description", str(item["condition"]))
    for key, value in defaults.items():
        item.setdefault(key, value)
    return AlertRule(**item)
