"""`fleetform tune`'s charts: latency percentiles and throughput against concurrency, the SLO drawn.

One model of what is drawn, `panels()`: a panel per latency series (the SLO's terms, plus TTFT and TPOT
at p90 where the SLO has neither) and one of output throughput, each point marked passing or failing.
It is drawn three ways: bars in the terminal (`terminal_chart`), a self-contained HTML page of inline
SVG (`html_chart`: no scripts, nothing fetched) and a PNG (`png_chart`, with matplotlib, the `plot`
extra, imported only when a PNG is asked for). `--plot FILE` picks by FILE's suffix (`PLOT_FORMATS`):
the suffix is checked while the options are parsed and matplotlib before the first request
(`require_writers`), so a long search never ends in a chart it cannot write.
"""

from __future__ import annotations

import argparse
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer.cli.common import output_file

PASS_COLOR, FAIL_COLOR, LINE_COLOR = "#16a34a", "#dc2626", "#2563eb"


@dataclass(frozen=True)
class Panel:
    """One series: a value (or None: not measured) and a verdict per level; `bound` NaN when none."""

    title: str
    concurrency: list[int]
    values: list[float | None]
    passed: list[bool]
    labels: list[str]  # the x axis' label of each level; "" where a closer level's would overlap it
    bound: float = float("nan")

    @property
    def has_bound(self) -> bool:
        return not math.isnan(self.bound)


def latency_series(slo: list) -> list:
    """Latency series to chart: the SLO's terms, plus TTFT and TPOT at p90 where the SLO has neither."""
    from renderer.endpoint.tune import SloTerm

    series = [t for t in slo if t.stat]
    for metric in ("ttft", "tpot"):
        if not any(t.metric == metric for t in series):
            series.append(SloTerm(metric, "p90", float("nan")))
    return series


def panels(answer: Any) -> list[Panel]:
    """What every chart draws: the last measurement of each level, in order of concurrency."""
    levels = sorted({lv.concurrency: lv for lv in answer.levels}.items())
    xs = [c for c, _ in levels]
    passed = [lv.passed for _, lv in levels]
    labels = axis_labels(xs, first=[answer.max_concurrency, answer.target_concurrency])
    out = [
        Panel(
            f"{t.name} (ms)",
            xs,
            [lv.values.get(t.name, t.value(lv.result)) for _, lv in levels],
            passed,
            labels,
            t.bound,
        )
        for t in latency_series(answer.slo)
    ]
    out.append(
        Panel("output throughput (tok/s)", xs, [lv.result.output_throughput for _, lv in levels], passed, labels)
    )
    return out


def axis_labels(xs: list[int], first: list[int | None], char: float = 0.017, pad: float = 0.012) -> list[str]:
    """A label per level on the log axis, none nearer another than half their widths and `pad` allow (a
    character is `char` of the axis: a 10 px digit on the HTML chart's 332 px axis, a little more than on
    the PNG's): the levels in `first` (the answer) are labelled before the rest, the rest from the lowest
    level up. Bisection measures levels close together (24, 26, 28; 112, 120, 128) where the geometric
    ones are far apart."""
    if not xs:
        return []
    lo, span = math.log2(xs[0]), (math.log2(xs[-1]) - math.log2(xs[0])) or 1.0
    at = {c: (math.log2(c) - lo) / span for c in xs}

    def clear(a: int, b: int) -> bool:
        return abs(at[a] - at[b]) >= (len(str(a)) + len(str(b))) / 2 * char + pad

    shown: list[int] = []
    for c in [c for c in first if c in at] + xs:
        if c not in shown and all(clear(c, s) for s in shown):
            shown.append(c)
    return [str(c) if c in shown else "" for c in xs]


def summary(answer: Any) -> list[str]:
    """The answer and the SLO, a line each, above every chart but the terminal's (the table says it)."""
    return [
        f"max_concurrency {answer.max_concurrency}, target_concurrency {answer.target_concurrency}",
        f"SLO {', '.join(t.text() for t in answer.slo)}",
    ]


# --- terminal ----------------------------------------------------------------------------------------------------


def terminal_chart(answer: Any, width: int = 40) -> str:
    """Bars per level for each latency series (`|` marks the SLO bound) and for output throughput."""
    drawn = panels(answer)
    if not drawn[0].concurrency:
        return ""
    lines: list[str] = []
    for panel in drawn:
        bound = panel.bound if panel.has_bound else None
        top = (max([v for v in panel.values if v is not None] + [bound or 0.0]) or 1.0) * 1.05
        mark = None if bound is None else min(width - 1, round(bound / top * width))
        lines.append(panel.title + (f", | = SLO {bound:g} ms" if bound is not None else ""))
        for c, v in zip(panel.concurrency, panel.values, strict=True):
            n = 0 if v is None else round(v / top * width)
            cells = ["#" if i < n else " " for i in range(width)]
            if mark is not None:
                cells[mark] = "|" if cells[mark] == " " else "+"
            lines.append(f"{c:>6} {''.join(cells)} {'-' if v is None else f'{v:.1f}'}")
        lines.append("")
    return "\n".join(lines[:-1])


# --- HTML --------------------------------------------------------------------------------------------------------


def html_chart(answer: Any, title: str) -> str:
    """A self-contained HTML page: one SVG panel per series, concurrency on a log axis, SLO bounds dashed."""
    svgs = [_svg(panel) for panel in panels(answer)]
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        + html.escape(title)
        + '</title></head>\n<body style="font-family: sans-serif">\n<h1>'
        + html.escape(title)
        + "</h1>\n<p>"
        + html.escape("; ".join(summary(answer)))
        + "</p>\n"
        + "\n".join(svgs)
        + "\n</body></html>\n"
    )


def _svg(panel: Panel, w: int = 420, h: int = 240, pad: int = 44) -> str:
    xs = panel.concurrency
    lo, hi = math.log2(min(xs)), math.log2(max(xs))
    span = (hi - lo) or 1.0
    known = [v for v in panel.values if v is not None]
    top = max(known + ([panel.bound] if panel.has_bound else []) + [1e-9]) * 1.1

    def x_of(c: int) -> float:
        return pad + (math.log2(c) - lo) / span * (w - 2 * pad)

    def y_of(v: float) -> float:
        return h - pad - v / top * (h - 2 * pad)

    points = " ".join(f"{x_of(c):.1f},{y_of(v):.1f}" for c, v in zip(xs, panel.values, strict=True) if v is not None)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(panel.title)}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>',
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="10">{top:.3g}</text>',
        f'<polyline fill="none" stroke="{LINE_COLOR}" stroke-width="2" points="{points}"/>',
    ]
    for c, v, ok, label in zip(xs, panel.values, panel.passed, panel.labels, strict=True):
        if label:
            parts.append(
                f'<text x="{x_of(c):.1f}" y="{h - pad + 14}" text-anchor="middle" font-size="10">{label}</text>'
            )
        if v is not None:
            color = PASS_COLOR if ok else FAIL_COLOR
            parts.append(f'<circle cx="{x_of(c):.1f}" cy="{y_of(v):.1f}" r="3.5" fill="{color}"/>')
    if panel.has_bound:
        yb = y_of(panel.bound)
        parts.append(f'<line x1="{pad}" y1="{yb:.1f}" x2="{w - pad}" y2="{yb:.1f}" stroke="{FAIL_COLOR}" ')
        parts.append('stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{w - pad}" y="{yb - 4:.1f}" text-anchor="end" font-size="10">')
        parts.append(f"SLO {panel.bound:g}</text>")
    parts.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle" font-size="10">concurrency</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- PNG ---------------------------------------------------------------------------------------------------------


def png_figure(answer: Any, title: str) -> Any:
    """The chart as a matplotlib `Figure` (object API: no pyplot, no global state, no display needed)."""
    from matplotlib.figure import Figure

    drawn = panels(answer)
    fig = Figure(figsize=(6.4, 2.4 * len(drawn)), dpi=100, layout="constrained")
    # Every text drawn as it is: a title holds the served model's name, and matplotlib would read `$...$`
    # in it as TeX math (and raise on an unbalanced one, after the whole search).
    fig.suptitle("\n".join([title, *summary(answer)]), fontsize=10, parse_math=False)
    for ax, panel in zip(fig.subplots(len(drawn), 1, squeeze=False)[:, 0], drawn, strict=True):
        measured = zip(panel.concurrency, panel.values, panel.passed, strict=True)
        points = [(c, v, ok) for c, v, ok in measured if v is not None]
        xs, ys = [c for c, _, _ in points], [v for _, v, _ in points]
        ax.plot(xs, ys, color=LINE_COLOR, linewidth=2)
        ax.scatter(xs, ys, c=[PASS_COLOR if ok else FAIL_COLOR for _, _, ok in points], zorder=3)
        if panel.has_bound:
            ax.axhline(panel.bound, color=FAIL_COLOR, linestyle="--", label=f"SLO {panel.bound:g}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(panel.concurrency, panel.labels)
        ax.minorticks_off()
        top = max(ys + ([panel.bound] if panel.has_bound else []), default=0.0) or 1.0
        ax.set_ylim(0, top * 1.1)  # as the HTML's: room above the highest point, which autoscaling clipped
        ax.set_title(panel.title, fontsize=10, parse_math=False)
        ax.set_xlabel("concurrency", fontsize=8)
    return fig


def png_chart(answer: Any, title: str) -> bytes:
    """The PNG's bytes; without the run's date or matplotlib's version in them, so a rerun of the same
    figures gives the same file."""
    buf = io.BytesIO()
    png_figure(answer, title).savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --- --plot FILE -------------------------------------------------------------------------------------------------

PLOT_FORMATS = {".html": html_chart, ".htm": html_chart, ".png": png_chart}


def plot_file(text: str) -> str:
    """argparse type of `--plot`: a FILE whose suffix names a format, at a path `output_file` accepts."""
    suffix = Path(text).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the suffix picks the format: .html (self-contained page) or .png, not {suffix or 'none'}"
        )
    return output_file(text)


def require_writers(paths: list[str] | None) -> None:
    """Stop with the install message (`cli.extras`) when a `--plot` FILE needs a package not installed."""
    from renderer.cli.extras import require

    for path in paths or []:
        if Path(path).suffix.lower() == ".png":
            require(f"tune --plot {path}", "matplotlib")


def chart(path: str, answer: Any, title: str) -> str | bytes:
    """The contents of `--plot path`, in the format its suffix names."""
    return PLOT_FORMATS[Path(path).suffix.lower()](answer, title)
