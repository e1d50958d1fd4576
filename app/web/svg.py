"""Small server-rendered SVG charts (bars and a line) with titles and axis labels; no chart library."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 260
# Room for the title above, the y labels on the left and the x labels below.
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 34, 44
FIRED, BLOCKED, LINE, GRID, TEXT = "#dc3545", "#adb5bd", "#0d6efd", "#dee2e6", "#495057"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above value (1, 2, 5 × 10^n), so tick labels are readable."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def _frame(title: str, x_title: str, y_title: str, aria: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(aria)}" font-size="13" fill="{TEXT}">',
        f"<title>{escape(aria)}</title>",
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="15" font-weight="600" '
        f'class="chart-title">{escape(title)}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle" '
        f'class="x-title">{escape(x_title)}</text>',
        f'<text x="12" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" text-anchor="middle" class="y-title" '
        f'transform="rotate(-90 12 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{escape(y_title)}</text>',
    ]


def _y_axis(parts: list[str], low: float, high: float) -> None:
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        value = low + (high - low) * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_number(value))}</text>'
        )


def bar_chart(
    title: str,
    labels: Sequence[str],
    fired: Sequence[int],
    blocked: Sequence[int],
    x_title: str,
    y_title: str = "events",
    label_every: int = 1,
) -> Markup:
    """Stacked bars (fired over blocked) per bucket; each bar carries data-count for tests and a tooltip."""
    total = sum(fired) + sum(blocked)
    top = _nice_max(max((f + b for f, b in zip(fired, blocked, strict=True)), default=0))
    top = max(4, -(-int(top) // 4) * 4)  # counts: four whole-number ticks, never 0.25 of an event
    parts = _frame(title, x_title, y_title, f"{title}: {total} events")
    _y_axis(parts, 0, top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.75, 1.0)
    for i, (label, f, b) in enumerate(zip(labels, fired, blocked, strict=True)):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base: float = TOP + plot_h
        tip = escape(f"{label}: {f + b} events ({f} fired, {b} blocked)")
        parts.append(f'<g class="bar" data-label="{escape(label)}" data-count="{f + b}" data-fired="{f}">')
        parts.append(f"<title>{tip}</title>")
        for value, colour in ((f, FIRED), (b, BLOCKED)):
            if value:
                h = plot_h * value / top
                base -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}"/>'
                )
        parts.append("</g>")
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="{TEXT}"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    title: str, points: Sequence[tuple[float, float]], x_labels: Sequence[tuple[float, str]], y_title: str
) -> Markup:
    """A line through (x, y) points, x in any unit (e.g. epoch seconds), with the given x tick labels."""
    parts = _frame(title, "time", y_title, f"{title}: {len(points)} readings")
    if not points:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="no-data">'
            "no readings yet</text>"
        )
        parts.append("</svg>")
        return Markup("".join(parts))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:  # a flat line still needs a scale
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    _y_axis(parts, y0, y1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (plot_w * (x - x0) / (x1 - x0) if x1 > x0 else plot_w / 2)

    def py(y: float) -> float:
        return TOP + plot_h - plot_h * (y - y0) / (y1 - y0)

    coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
    parts.append(f'<polyline class="line" points="{coords}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    if len(points) == 1:
        parts.append(f'<circle cx="{px(xs[0]):.1f}" cy="{py(ys[0]):.1f}" r="3" fill="{LINE}"/>')
    for x, text in x_labels:
        if x0 <= x <= x1:
            anchor = "start" if px(x) < LEFT + 30 else "end" if px(x) > WIDTH - RIGHT - 30 else "middle"
            parts.append(
                f'<text x="{px(x):.1f}" y="{TOP + plot_h + 16}" text-anchor="{anchor}">{escape(text)}</text>'
            )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="{TEXT}"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))
