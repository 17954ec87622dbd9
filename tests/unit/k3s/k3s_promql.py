"""Helpers for the k3s monitoring tests: PromQL metric names, and the names the daemon exports.

``metric_names`` is a small tokenizer, not a PromQL parser: it removes what cannot be a metric
name (strings, ``{...}`` matchers, ``[...]`` ranges, ``by (...)``-style label lists, numbers and
durations, Grafana template variables, keywords) and reads what is left. A name followed by
``(`` is a function, and must be one PromQL knows.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.accelerators import Reading
from agent.metrics.exposition import (
    ModelSnapshot,
    ShadowSnapshot,
    Snapshot,
    render_full,
    render_summary,
)
from agent.metrics.recorder import Recorder

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "k3s" / "prometheus"
DASHBOARD = ROOT / "k3s" / "grafana" / "edge-fleet.json"

# Exported by the model-lifecycle work, later: rules may use them, the dashboard may not.
LATER = frozenset(
    {"edge_control_plane_connected", "edge_model_sync_last_success_timestamp_seconds"}
)
# Set by Prometheus itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})

# Functions and aggregation operators (Prometheus 2.42 and later), and the @ modifiers.
# fmt: off
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "vector", "year", "avg", "bottomk", "count", "count_values",
    "group", "limit_ratio", "limitk", "max", "min", "quantile", "stddev", "stdvar", "sum",
    "topk", "start", "end"
})
KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan"
})
# fmt: on

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:[^"\\]|\\.)*)"')
_TEMPLATE_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_NUMBER = re.compile(
    r"(?<![\w:.])(?:0x[0-9a-f]+|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)"
    r"(?:(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)?(?![\w:])",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[a-zA-Z_]\w*\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.DOTALL)


class UnknownFunction(ValueError):
    pass


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (recording-rule names included)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub(" ", expr)
    text = _TEMPLATE_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in KEYWORDS:  # `or (a) ...`: an operator before a parenthesis
            continue
        if text[match.end() :].lstrip().startswith("("):
            if word not in FUNCTIONS:
                raise UnknownFunction(f"{word!r} in {expr!r} is not a PromQL function")
        else:
            names.add(word)
    return names


def variable_query_metrics(query: str) -> set[str]:
    """The metric names a Grafana Prometheus variable query reads."""
    match = _LABEL_VALUES.match(query)
    if match:  # label_values(selector, label): the label is not a metric
        return metric_names(match.group(1))
    match = _QUERY_RESULT.match(query)
    if match:
        return metric_names(match.group(1))
    if query.lstrip().startswith(("label_values", "metrics")):
        return set()  # label_values(label), metrics(regex): no selector
    return metric_names(query)


def _sample_names(text: bytes) -> frozenset[str]:
    return frozenset(
        sample.name
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    )


def exported_names() -> tuple[frozenset[str], frozenset[str]]:
    """Sample names of the daemon's ``/metrics/summary`` and ``/metrics``, rendered by its own
    code with every family present (a request, a rejection, a scored model on a fleet
    manifest's canary with a shadow, an accelerator)."""
    rec = Recorder(["defects"])
    timing = {
        "total": 0.05,
        "queue": 0.001,
        "preprocess": 0.01,
        "inference": 0.03,
        "postprocess": 0.001,
    }
    rec.observe_request("defects", 200, timing, camera="cam-1")
    rec.observe_rejection("defects", "queue_full")
    rec.observe_queue("defects", 1)
    snap = Snapshot(
        True,
        [ModelSnapshot("defects", "1.0.0", "sha256:" + "ab" * 32, "cpu", 0, 0.9,
                       rollout="canary", shadow=ShadowSnapshot("0.9.0", 0.95, 30))],
        [Reading("0", "GPU", 0.5, 1.0, 2.0, 50.0)],
    )
    return _sample_names(render_summary(rec, snap)), _sample_names(render_full(rec, snap))
