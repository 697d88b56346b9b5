"""The demo's training-curves figure: the training loss (from `metrics.jsonl`) and each
held-out metric at the evaluated checkpoints against its trivial baseline, drawn with PIL
(no plotting library is a dependency) into one PNG.

  draw_curves(read_losses("out/demo/train/metrics.jsonl"), points, "out/demo/curves.png")

`points`: one {"step": int, "n": held-out records, "metrics": {name: {"model": v,
"baseline": v}}} per evaluated checkpoint (`experiments.eval.score`'s "metrics" carry both).
"""

from __future__ import annotations

import json

from experiments.metrics import METRICS
from qwen25vl_jax.atomic_write import atomic_path

MODEL_COLOUR, BASELINE_COLOUR, AXIS_COLOUR = (31, 119, 180), (214, 39, 40), (90, 90, 90)
PANEL_COLS = 3
# an error metric's panel stops at this multiple of its largest baseline: an untrained model's
# first answers (a timing MAE of 5000 s at step 1) would flatten the rest of its curve
OFF_SCALE = 4.0


def read_losses(path: str) -> list[tuple[int, float]]:
    """(step, loss) of each line of a trainer's metrics.jsonl that logs a loss, by step."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted((int(r["step"]), float(r["loss"])) for r in rows if "loss" in r)


def _panel(draw, box, title: str, series, x_range, y_max: float | None = None) -> None:
    """One chart inside box (x0, y0, x1, y1): axes, min / max labels, and each
    (points, colour, dashed) series of (x, y) points as a polyline with dots. y_max: points
    above it are drawn at it, and the panel names the largest of them."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = x0 + 52, y0 + 22, x1 - 10, y1 - 22
    draw.text((x0 + 6, y0 + 4), title, fill="black")
    draw.rectangle((left, top, right, bottom), outline=AXIS_COLOUR)
    above = [(y, x) for pts, _, _ in series for x, y in pts if y_max is not None and y > y_max]
    if above:
        y, x = max(above)
        draw.text((left + 8, top + 4), f"off scale: {y:.3g} at step {x:g}", fill=AXIS_COLOUR)
        series = [([(x, min(y, y_max)) for x, y in pts], c, d) for pts, c, d in series]
    ys = [y for pts, _, _ in series for _, y in pts]
    if not ys:
        draw.text((left + 8, top + 8), "no data", fill=AXIS_COLOUR)
        return
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or max(abs(hi), 1.0) * 0.1  # a flat series sits mid-panel
    lo, hi = lo - pad, hi + pad
    (xa, xb) = x_range
    sx = lambda x: left + (right - left) * (x - xa) / ((xb - xa) or 1)
    sy = lambda y: bottom - (bottom - top) * (y - lo) / (hi - lo)
    draw.text((x0 + 4, top - 4), f"{hi:.3g}", fill=AXIS_COLOUR)
    draw.text((x0 + 4, bottom - 8), f"{lo:.3g}", fill=AXIS_COLOUR)
    draw.text((left, bottom + 4), f"{xa:g}", fill=AXIS_COLOUR)
    draw.text((right - 36, bottom + 4), f"step {xb:g}", fill=AXIS_COLOUR)
    for pts, colour, dashed in series:
        xy = [(sx(x), sy(y)) for x, y in pts]
        if dashed and len(xy) == 1:  # a single baseline value: a level across the panel
            xy = [(left, xy[0][1]), (right, xy[0][1])]
        for a, b in zip(xy, xy[1:]):
            if dashed:
                _dashed(draw, (a, b), colour)
            else:
                draw.line((a, b), fill=colour, width=2)
        if len(pts) < 60:  # dots at the evaluated checkpoints, not on every logged step
            for x, y in ((sx(x), sy(y)) for x, y in pts):
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def _dashed(draw, segment, colour, dash: float = 6.0) -> None:
    """A dashed line: `dash` pixels drawn, `dash` skipped."""
    (ax, ay), (bx, by) = segment
    length = ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5
    for k in range(int(length // (2 * dash)) + 1):
        t0, t1 = 2 * k * dash / (length or 1), min(1.0, (2 * k + 1) * dash / (length or 1))
        if t0 < 1:
            draw.line(
                (
                    ax + (bx - ax) * t0,
                    ay + (by - ay) * t0,
                    ax + (bx - ax) * t1,
                    ay + (by - ay) * t1,
                ),
                fill=colour,
                width=2,
            )


def draw_curves(losses, points, path: str, size: tuple[int, int] = (960, 540)) -> None:
    """Writes the PNG of `size` (width, height): a loss panel, then one panel per metric of
    `METRICS` that `points` hold (model in blue, baseline in red, dashed). Written atomically."""
    names = [m for m in METRICS if any(m in p["metrics"] for p in points)]
    legend = "blue: model; red, dashed: its strongest trivial baseline"
    steps = [s for s, _ in losses] + [p["step"] for p in points]
    x_range = (min(steps, default=0), max(steps, default=1))
    panels = [("training loss", [(list(losses), MODEL_COLOUR, False)], None)]
    for m in names:
        task, better, desc = METRICS[m]
        at = [p for p in points if m in p["metrics"]]
        model = [(p["step"], p["metrics"][m]["model"]) for p in at]
        base = [
            (p["step"], p["metrics"][m]["baseline"])
            for p in at
            if p["metrics"][m].get("baseline") is not None
        ]
        ns = sorted({p["metrics"][m].get("n", p.get("n")) for p in at} - {None})
        n = f", n {'/'.join(map(str, ns))}" if ns else ""
        y_max = OFF_SCALE * max(y for _, y in base) if better == "lower" and base else None
        panels.append(
            (
                f"{task}: {desc} ({better} is better{n})",
                [(model, MODEL_COLOUR, False), (base, BASELINE_COLOUR, True)],
                y_max,
            )
        )
    draw_panels(panels, path, legend, x_range, size)


def draw_panels(panels, path: str, legend: str, x_range, size=(960, 540)) -> None:
    """Writes a PNG of `size` holding one chart per (title, series, y_max) of `panels`,
    PANEL_COLS a row, under the line `legend`; series: [(points [(x, y)], colour, dashed)];
    y_max: see `_panel` (None: every point in range). Atomic."""
    from PIL import Image, ImageDraw

    rows = -(-len(panels) // PANEL_COLS)
    w, h = size
    pw, ph = w // PANEL_COLS, (h - 24) // rows
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), legend, fill="black")
    for k, (title, series, y_max) in enumerate(panels):
        x, y = (k % PANEL_COLS) * pw, 24 + (k // PANEL_COLS) * ph
        _panel(draw, (x, y, x + pw, y + ph), title, series, x_range, y_max)
    with atomic_path(path) as tmp:  # a killed run leaves no half-written PNG
        canvas.save(tmp, format="PNG")
