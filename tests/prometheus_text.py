"""A strict reader of the Prometheus text exposition format (0.0.4), for tests of the gateway's /metrics.

Stricter than what scrapers accept on purpose: every sample belongs to a family declared with `# TYPE`
before it, names and label values are well-formed, no series appears twice, and each histogram's
buckets are cumulative, end at `+Inf` and agree with its `_count`.
"""

from __future__ import annotations

import math
import re

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("", "_total"), "gauge": ("",)}

Series = tuple[str, tuple[tuple[str, str], ...]]


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    out, pos = [], 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad labels: {text!r} at {pos}"
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    assert len({k for k, _ in out}) == len(out), f"label repeated: {text!r}"
    return tuple(out)


def parse_strict(text: str) -> dict[Series, float]:
    """(name, labels) -> value for every sample; AssertionError on anything malformed."""
    assert text.endswith("\n"), "the text must end with a newline"
    types: dict[str, str] = {}
    samples: dict[Series, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            assert re.fullmatch(_NAME, family) and kind in _SUFFIXES, line
            assert family not in types, f"{family} declared twice"
            types[family] = kind
            continue
        if line.startswith("# HELP ") or not line.strip():
            continue
        assert not line.startswith("#"), line
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group("name"), _labels(m.group("labels") or "")
        family = next((f for f in types if any(name == f + s for s in _SUFFIXES[types[f]])), None)
        assert family is not None, f"{name}: no # TYPE before it"
        value = float(m.group("value"))
        assert not math.isnan(value), line
        assert (name, labels) not in samples, f"series twice: {line}"
        samples[(name, labels)] = value
    for family, kind in types.items():
        if kind == "histogram":
            _check_histogram(family, samples)
    return samples


def _check_histogram(family: str, samples: dict[Series, float]) -> None:
    groups: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for (name, labels), value in samples.items():
        if name == family + "_bucket":
            rest = tuple(kv for kv in labels if kv[0] != "le")
            le = dict(labels)["le"]
            groups.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), value))
    for rest, buckets in groups.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, f"{family}{rest}: buckets out of order"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{family}{rest}: buckets not cumulative"
        assert samples[(family + "_count", rest)] == counts[-1], f"{family}{rest}: +Inf != _count"
        assert (family + "_sum", rest) in samples, f"{family}{rest}: no _sum"
