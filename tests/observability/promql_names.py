"""The metric names a PromQL expression selects, found without a PromQL parser.

promtool checks the syntax separately; this only has to find every selector's metric name, so it strips
what cannot hold one (strings, label matchers, ranges, grouping label lists, numbers) and keeps the
identifiers that are not functions or keywords.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?(?:\d+[a-z]+)+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names selected by `expr` (Grafana variables such as $__rate_interval are allowed)."""
    text = _STRING.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # a variable outside a matcher or range, e.g. topk($n, ...)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function or aggregation call, or an operator keyword
        names.add(name)
    return names


def label_values_metric(query: str) -> set[str]:
    """The metric of a Grafana `label_values(metric, label)` variable query; none for label_values(label)."""
    match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    return metric_names(match.group(1)) if match else set()
