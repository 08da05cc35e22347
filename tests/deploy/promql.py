"""Which metric names a PromQL expression (or a Grafana variable query) reads. Not a parser: it strips what
cannot be a metric name (strings, label matchers, ranges, grouping clauses, function calls, Grafana variables)
and keeps the identifiers that remain, which is enough to catch a misspelt or invented metric."""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}

_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]+)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    names = set(_NAME_MATCHER.findall(expr))
    text = _MATCHERS.sub(" ", _STRING.sub('""', expr))
    text = _GRAFANA_VAR.sub(" ", _RANGE.sub(" ", text))
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        token = match.group(1)
        if token in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation being called
        names.add(token)
    return names


def variable_metric_names(query: str) -> set[str]:
    """`label_values(metric{...}, label)` reads `metric`; `label_values(label)` reads none."""
    match = _LABEL_VALUES.match(query)
    if match:
        return metric_names(match.group(1))
    if query.strip().startswith("label_values("):
        return set()
    return metric_names(query)
