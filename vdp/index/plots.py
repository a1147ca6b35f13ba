"""Histograms drawn as inline SVG for report.html: no script, no library, nothing fetched.

One bar per bin (equal widths: the bins are categories such as "≈30 fps" or "720–1080 px"), its
count above it, the bin labels under the x axis and a count scale on the y axis. Filter
thresholds used at pack time are dashed vertical lines, placed by linear interpolation inside
the bin holding the threshold. The svg carries `data-metric` and `data-count` (the samples
plotted), each bar `data-count`, each threshold line `data-rule` and `data-threshold`, so a test
(or a script) can read the numbers back from the page.
"""

from __future__ import annotations

import html
import math

from vdp.index.histograms import INF, Histogram, Metric, bin_of

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 36, 78  # margins: y scale, -, threshold labels, bin labels and x title
BAR_COLOR, LINE_COLOR = "#4a7ab5", "#c0392b"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float) -> str:
    """A number for a label: short, and the same on every run."""
    return f"{x:.4g}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x)}"


def nice_top(peak: int) -> tuple[int, int]:
    """(axis top, tick step): a 1-2-5 step giving at most 5 ticks above zero."""
    raw = max(peak, 1) / 5
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(1, int(step))
    return step * math.ceil(max(peak, 1) / step), step


def threshold_x(edges: tuple[float, ...], value: float, x0: float, bar: float) -> float:
    """Where `value` lies on the bar axis: its bin, and its place inside the bin when the bin is bounded."""
    i = bin_of(edges, value)
    lo, hi = edges[i], edges[i + 1]
    inside = 0.0 if hi == INF else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    return x0 + (i + inside) * bar


def histogram_svg(metric: Metric, hist: Histogram, thresholds: list[tuple[str, float]] = ()) -> str:
    """One metric's histogram, with `thresholds` [(rule, value)] as labelled lines."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    top, step = nice_top(max(hist.counts))
    bar = plot_w / len(hist.counts)
    parts = [_axes(plot_w, base, top, step, plot_h)]
    for i, (count, label) in enumerate(zip(hist.counts, metric.bin_labels())):
        x = LEFT + i * bar
        h = plot_h * count / top
        parts.append(
            f'<rect class="bar" data-bin="{_esc(label)}" data-count="{count}" x="{x + 1:.1f}" y="{base - h:.1f}" '
            f'width="{max(bar - 2, 1):.1f}" height="{h:.1f}" fill="{BAR_COLOR}"><title>{_esc(label)}: {count}</title></rect>'
        )
        if count:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{base - h - 3:.1f}" font-size="9" text-anchor="middle">{count}</text>'
            )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{base + 10:.1f}" font-size="9" text-anchor="end" '
            f'transform="rotate(-45 {x + bar / 2:.1f} {base + 10:.1f})">{_esc(label)}</text>'
        )
    for n, (rule, value) in enumerate(thresholds):
        x = threshold_x(hist.edges, value, LEFT, bar)
        parts.append(
            f'<line class="threshold" data-rule="{_esc(rule)}" data-threshold="{value}" x1="{x:.1f}" y1="{TOP - 8}" '
            f'x2="{x:.1f}" y2="{base}" stroke="{LINE_COLOR}" stroke-width="2" stroke-dasharray="5 3"/>'
            f'<text x="{x + 3:.1f}" y="{11 + 10 * n}" font-size="10" fill="{LINE_COLOR}">'
            f"{_esc(rule)} {_esc(_num(value))}</text>"
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">{_esc(metric.title)}</text>'
    )
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" data-metric="{_esc(metric.name)}" data-count="{hist.count}">'
        f"<title>{_esc(metric.title)}: {hist.count} samples</title>{''.join(parts)}</svg>"
    )


def _axes(plot_w: float, base: float, top: int, step: int, plot_h: float) -> str:
    ticks = []
    for value in range(0, top + 1, step):
        y = base - plot_h * value / top
        ticks.append(
            f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT + plot_w:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 6}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{value}</text>'
        )
    return (
        "".join(ticks)
        + f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#444"/>'
        + f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w:.1f}" y2="{base}" stroke="#444"/>'
        + f'<text x="12" y="{TOP + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">samples</text>'
    )


def summary_line(hist: Histogram) -> str:
    return f"{hist.count} samples · min {_num(hist.low)} · mean {_num(hist.mean)} · max {_num(hist.high)}"
