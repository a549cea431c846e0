"""The instance page's timeline: spans of a history laid out as an SVG Gantt chart (one lane
per activity, timer, sub-orchestration, entity call or event), with a time axis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..inspection import seconds
from ..timeline import Span

LANE = 20  # px per lane
LABELS = 260  # px of the label column
PLOT = 700  # px of the time axis
AXIS = 24  # px above the first lane
LABEL_CHARS = 38


@dataclass(frozen=True, slots=True)
class Bar:
    y: int
    x: float  # rounded to a tenth of a pixel, as drawn
    width: float
    kind: str  # a CSS class: activity, timer, sub-orchestration, ...
    outcome: str  # completed, failed, fired, open, point
    label: str
    tip: str
    instance_id: str | None


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    plot_x: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]


def _css(kind: str) -> str:
    return kind.replace(" ", "-")


def chart(spans: list[Span], begun: datetime | None, ended: datetime) -> Chart:
    """`spans` from `begun` to `ended` (open spans run to `ended`)."""
    start = begun or ended
    total = max((ended - start).total_seconds(), 1e-3)
    scale = PLOT / total
    bars = []
    for lane, span in enumerate(spans):
        end = span.end or ended
        took = (end - span.start).total_seconds()
        x = LABELS + max(0.0, (span.start - start).total_seconds()) * scale
        width = max(took * scale, 2.0) if span.outcome != "point" else 0.0
        label = span.label if len(span.label) <= LABEL_CHARS else span.label[:LABEL_CHARS - 1] + "…"
        timing = "" if span.outcome == "point" else f", took {seconds(took)}"
        offset = seconds((span.start - start).total_seconds())
        bars.append(Bar(
            AXIS + lane * LANE, round(x, 1), round(width, 1), _css(span.kind), span.outcome, label,
            f"{span.kind} {span.label}: {span.outcome} at +{offset}{timing}", span.instance_id))
    ticks = [(round(LABELS + PLOT * i / 5, 1), "+" + seconds(total * i / 5)) for i in range(6)]
    return Chart(LABELS + PLOT + 40, AXIS + len(spans) * LANE + 6, LABELS, bars, ticks)
