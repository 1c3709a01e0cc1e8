"""An SVG timeline of a chaos experiment, written by hand (no plotting dependency).

One lane per contender slot (each replacement process continues its slot's lane), a
lane for database faults on top. Green bars: raised (the sure part of each run). Shaded
spans and ticks: faults, labelled by kind. Thin grey lines: handovers from one
tenure's end to the next tenure's start. Red bars under a lane: overlaps.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from leadership.testing import overlaps

from .faults import PROCESS_KINDS
from .report import tenures
from .runner import Experiment

__all__ = ["render", "write"]

COLOURS = {
    "kill": "#d62728",
    "close": "#1f77b4",
    "stop": "#9467bd",
    "partition": "#ff7f0e",
    "latency": "#bcbd22",
    "terminate": "#8c564b",
    "restart": "#e377c2",
    "steal": "#17becf",
    "readonly": "#7f7f7f",
}

LANE = 34
LEFT = 70
TOP = 40
RIGHT = 20


def render(experiment: Experiment, width: int | None = None, caption: str = "") -> str:
    """The SVG document for ``experiment``; ``caption`` goes under the title. The width
    defaults to 1400 px, or 20 px per second for runs longer than a minute."""
    origin, end = experiment.start, experiment.end
    span = max(end - origin, 1)
    if width is None:
        width = max(1400, LEFT + RIGHT + int(span / 1e9 * 20))
    plot = width - LEFT - RIGHT
    slots = sorted(set(experiment.slots.values()))
    lanes = {slot: i + 1 for i, slot in enumerate(slots)}
    height = TOP + LANE * (len(slots) + 1) + 78

    def x(ns: int) -> float:
        return LEFT + plot * min(max(ns - origin, 0), span) / span

    def lane_y(lane: int) -> float:
        return TOP + lane * LANE

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="16" font-size="13">leadership chaos run: seed '
        f"{experiment.settings.seed}, {len(experiment.faults)} faults, "
        f"{len(experiment.histories)} processes. {escape(caption)}</text>",
        f'<text x="8" y="{lane_y(0) + 21}">database</text>',
    ]
    for slot, lane in lanes.items():
        y = lane_y(lane)
        out.append(f'<text x="8" y="{y + 21}">c{slot}</text>')
        out.append(
            f'<line x1="{LEFT}" y1="{y + LANE - 2}" x2="{width - RIGHT}" y2="{y + LANE - 2}" '
            'stroke="#eee"/>'
        )
    seconds = span / 1e9
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600) if seconds / s <= 30)
    axis = lane_y(len(slots) + 1) + 6
    tick = 0
    while tick <= seconds:
        tx = LEFT + plot * tick / seconds
        out.append(f'<line x1="{tx:.1f}" y1="{TOP}" x2="{tx:.1f}" y2="{axis}" stroke="#f2f2f2"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis + 14}" text-anchor="middle">{tick} s</text>')
        tick += step

    for fault in experiment.faults:
        colour = COLOURS.get(fault.kind, "black")
        if fault.kind in PROCESS_KINDS and fault.victim in experiment.slots:
            y = lane_y(lanes[experiment.slots[fault.victim]])
        else:
            y = lane_y(0)
        x1, x2 = x(fault.start), x(fault.end)
        title = escape(f"{fault.kind} {fault.victim or ''} {fault.detail}".strip())
        out.append(
            f'<g><title>{title}</title><rect x="{x1:.1f}" y="{y + 3}" '
            f'width="{max(x2 - x1, 2):.1f}" height="{LANE - 8}" fill="{colour}" '
            'fill-opacity="0.25"/>'
            f'<line x1="{x1:.1f}" y1="{y + 1}" x2="{x1:.1f}" y2="{y + LANE - 3}" '
            f'stroke="{colour}" stroke-width="1.5"/>'
            f'<text x="{x1 + 2:.1f}" y="{y + 10}" font-size="9" fill="{colour}">'
            f"{fault.kind}</text></g>"
        )

    for process, history in experiment.histories.items():
        y = lane_y(lanes[experiment.slots[process]])
        for run in history.runs:
            x1, x2 = x(run.first_after), x(run.last_before)
            out.append(
                f'<rect x="{x1:.1f}" y="{y + 13}" width="{max(x2 - x1, 0.8):.1f}" '
                f'height="12" fill="#2ca02c"><title>{escape(process)}</title></rect>'
            )
        for mark in history.marks:
            out.append(
                f'<circle cx="{x(mark.before):.1f}" cy="{y + 28}" r="2" fill="#555">'
                f"<title>{escape(process)} {mark.kind.name.lower()}</title></circle>"
            )

    previous = None
    for tenure in tenures(experiment.histories.values()):
        if previous is not None and tenure.process != previous.process:
            y1 = lane_y(lanes[experiment.slots[previous.process]]) + 19
            y2 = lane_y(lanes[experiment.slots[tenure.process]]) + 19
            out.append(
                f'<line x1="{x(previous.sure_end):.1f}" y1="{y1}" x2="{x(tenure.sure_start):.1f}" '
                f'y2="{y2}" stroke="#999" stroke-width="0.7"/>'
            )
        previous = tenure

    for overlap in overlaps(experiment.histories.values()):
        for run in (overlap.first, overlap.second):
            y = lane_y(lanes[experiment.slots[run.process]])
            x1 = x(max(overlap.first.first_after, overlap.second.first_after))
            out.append(
                f'<rect x="{x1 - 2:.1f}" y="{y + 27}" width="5" height="5" fill="red">'
                "<title>overlap</title></rect>"
            )

    legend_y = axis + 32
    lx = LEFT
    out.append(
        f'<rect x="{lx}" y="{legend_y - 9}" width="14" height="9" fill="#2ca02c"/>'
        f'<text x="{lx + 18}" y="{legend_y}">raised</text>'
        f'<line x1="{lx + 70}" y1="{legend_y - 9}" x2="{lx + 84}" y2="{legend_y}" '
        'stroke="#999"/>'
        f'<text x="{lx + 88}" y="{legend_y}">handover</text>'
        f'<circle cx="{lx + 160}" cy="{legend_y - 4}" r="2" fill="#555"/>'
        f'<text x="{lx + 166}" y="{legend_y}">built / closed</text>'
        f'<rect x="{lx + 255}" y="{legend_y - 8}" width="5" height="5" fill="red"/>'
        f'<text x="{lx + 264}" y="{legend_y}">overlap</text>'
    )
    lx += 330
    for kind, colour in COLOURS.items():
        out.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="14" height="9" fill="{colour}" '
            f'fill-opacity="0.5"/><text x="{lx + 18}" y="{legend_y}">{kind}</text>'
        )
        lx += 30 + 7 * len(kind)
    out.append(
        f'<text x="{LEFT}" y="{legend_y + 18}" fill="#555">Bars show the sure part of each '
        "run of True calls; a white gap inside a bar is a stretch of more than "
        f"{experiment.settings.witness_gap * 1000:.0f} ms in which that process made no call "
        "(not counted as holding). Hover for details.</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(
    experiment: Experiment, path: str | Path, width: int | None = None, caption: str = ""
) -> None:
    Path(path).write_text(render(experiment, width, caption))
