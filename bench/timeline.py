"""One boot's timeline as an SVG (pure: events in, text out).

Per component, two lanes: podvm-bootstrap's (unit queued → container up →
released at its gate → ready) and the ideal script's for the same container
(podman run started → podman run returned → ready). Times are seconds after
the start of each boot."""

from __future__ import annotations

from html import escape

# (event key, label, colour) in the order they happen.
DAEMON_PHASES = (("queued", "unit queued → container up", "#9ecae1"),
                 ("up", "container up, process held at its gate", "#fdd0a2"),
                 ("released", "released → ready", "#74c476"))
IDEAL_PHASES = (("run", "podman run -d", "#c6dbef"),
                ("returned", "returned → ready", "#a1d99b"))
ROW = 18
LEFT = 190
WIDTH = 900


def _x(t: float, scale: float) -> float:
    return LEFT + t * scale


def render_svg(daemon: dict[str, dict[str, float | None]], ideal: dict[str, dict[str, float | None]],
               title: str) -> str:
    """daemon: {component: {queued, up, released, ready}}; ideal: {component:
    {run, returned, ready}} (seconds; None when not seen)."""
    names = list(daemon) or list(ideal)
    times = [t for events in (*daemon.values(), *ideal.values()) for t in events.values() if t is not None]
    end = max(times, default=1.0) * 1.08 or 1.0
    scale = (WIDTH - LEFT - 20) / end
    height = 70 + len(names) * ROW * 2 + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="10" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    step = _tick_step(end)
    tick = 0.0
    while tick <= end:
        x = _x(tick, scale)
        out.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{height - 50}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 38}" text-anchor="middle">{tick:.2f} s</text>')
        tick = round(tick + step, 6)
    y = 40
    for name in names:
        for lane, events, phases in (("podvm-bootstrap", daemon.get(name, {}), DAEMON_PHASES),
                                     ("ideal", ideal.get(name, {}), IDEAL_PHASES)):
            out.append(f'<text x="10" y="{y + 12}">{escape(name)} <tspan fill="#777">{lane}</tspan></text>')
            keys = [k for k, _, _ in phases] + ["ready"]
            for (key, label, colour), following in zip(phases, keys[1:]):
                start, stop = events.get(key), events.get(following)
                if start is None or stop is None or stop < start:
                    continue
                out.append(f'<rect x="{_x(start, scale):.1f}" y="{y + 2}" width="{max(1.0, (stop - start) * scale):.1f}" '
                           f'height="{ROW - 5}" fill="{colour}"><title>{escape(name)}: {escape(label)} '
                           f'{start:.3f}–{stop:.3f} s</title></rect>')
            if events.get("ready") is not None:
                x = _x(float(events["ready"]), scale)
                out.append(f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + ROW - 2}" stroke="black" '
                           f'stroke-width="2"/>')
            y += ROW
        y += 4
    legend_y = height - 18
    x = 10.0
    for _, label, colour in (*DAEMON_PHASES, *IDEAL_PHASES):
        out.append(f'<rect x="{x:.0f}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14:.0f}" y="{legend_y}">{escape(label)}</text>')
        x += 14 + 6.2 * len(label) + 14
    out.append(f'<text x="{x:.0f}" y="{legend_y}">| = ready</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _tick_step(end: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
        if end / step <= 12:
            return step
    return 10.0
