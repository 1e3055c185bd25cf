"""The tenant page's usage chart: cumulative tokens over the period as SVG (pure, no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Any

from ...periods import Period
from .format import compact

CHART_W, CHART_H, PAD_L, PAD_B, PAD_T, PAD_R = 720, 240, 72, 30, 12, 8


def axis_ticks(top: float) -> list[float]:
    """0 and about four round steps (1, 2, 2.5 or 5 x 10^n tokens) up to `top`."""
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(1.0, next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw))
    return [i * step for i in range(int(top // step) + 1)]


@dataclass(frozen=True, slots=True)
class Chart:
    """Cumulative tokens over the period, in the SVG's coordinates: drawn here, updated by dashboard.js."""

    points: str
    quota_y: float
    quota_label: str
    ticks: list[tuple[float, str]]  # (y, label)
    start_label: str
    end_label: str
    aria_label: str

    def as_json(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "quota_y": self.quota_y,
            "quota_label": self.quota_label,
            "ticks": [{"y": y, "label": label} for y, label in self.ticks],
            "start_label": self.start_label,
            "end_label": self.end_label,
            "aria_label": self.aria_label,
        }

    def svg(self) -> str:
        right, bottom = CHART_W - PAD_R, CHART_H - PAD_B
        ticks = "".join(
            f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"></line>'
            f'<text class="label" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
            for y, label in self.ticks
        )
        return (
            f'<svg class="chart" id="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img"'
            f' aria-label="{escape(self.aria_label)}">'
            f'<g class="ticks">{ticks}</g>'
            f'<line class="axis" x1="{PAD_L}" y1="{bottom}" x2="{right}" y2="{bottom}"></line>'
            f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{bottom}"></line>'
            f'<line class="quota" x1="{PAD_L}" y1="{self.quota_y:.1f}" x2="{right}" y2="{self.quota_y:.1f}">'
            "</line>"
            f'<text class="quota-label" x="{right - 4}" y="{self.quota_y - 6:.1f}" text-anchor="end">'
            f"{escape(self.quota_label)}</text>"
            f'<polyline class="usage" points="{self.points}"></polyline>'
            f'<text class="label start" x="{PAD_L}" y="{CHART_H - 6}">{escape(self.start_label)}</text>'
            f'<text class="label end" x="{right}" y="{CHART_H - 6}" text-anchor="end">'
            f"{escape(self.end_label)}</text>"
            "</svg>"
        )


def usage_chart(period: Period, hourly: list[tuple[datetime, int]], quota: int, now: datetime) -> Chart:
    """Cumulative tokens over the period, with the quota as a dashed line and round y-axis steps."""
    total = sum(tokens for _, tokens in hourly)
    top = max(quota, total, 1) * 1.1
    span = (period.end - period.start).total_seconds()
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def x(moment: datetime) -> float:
        return PAD_L + plot_w * min(max((moment - period.start).total_seconds() / span, 0.0), 1.0)

    def y(tokens: float) -> float:
        return PAD_T + plot_h * (1 - tokens / top)

    points = [f"{x(period.start):.1f},{y(0):.1f}"]
    running = 0
    for bucket, tokens in hourly:
        points.append(f"{x(bucket):.1f},{y(running):.1f}")
        running += tokens
        points.append(f"{x(bucket + timedelta(hours=1)):.1f},{y(running):.1f}")
    points.append(f"{x(min(now, period.end)):.1f},{y(running):.1f}")
    return Chart(
        points=" ".join(points),
        quota_y=round(y(quota), 1),
        quota_label=f"quota {quota:,}",
        ticks=[(round(y(tick), 1), compact(tick)) for tick in axis_ticks(top)],
        start_label=f"{period.start:%b} {period.start.day}",
        end_label=f"{period.end:%b} {period.end.day}",
        aria_label=f"Cumulative tokens this period: {total:,} of {quota:,}",
    )
