"""Server-rendered SVG: a tiny bar chart and the map of the grid (no tile server, no JS).

Everything here is pure (data in, markup out) and escapes every label it draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

import h3
from markupsafe import Markup

RED = "#c8102e"  # Red Cross red
GREY = "#8a8f98"


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, unit: str = "",
              width: int = 560, height: int = 240, color: str = RED, max_value: float | None = None) -> Markup:
    """Vertical bars with their value on top; ``max_value`` fixes the scale (100 for %)."""
    n = max(1, len(values))
    top, bottom, left, right = 34, 40, 12, 12
    plot_h = height - top - bottom
    slot = (width - left - right) / n
    bar_w = max(4.0, slot * 0.62)
    peak = max_value if max_value is not None else max([*values, 0.0])
    peak = peak or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold" fill="#222">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#bbb"/>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = 0.0 if v <= 0 else max(1.0, plot_h * min(v, peak) / peak)
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h - h
        cx = x + bar_w / 2
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
                   f'<title>{escape(label)}: {_num(v)}{escape(unit)}</title></rect>')
        out.append(f'<text x="{cx:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle" fill="#333">'
                   f'{_num(v)}{escape(unit)}</text>')
        out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" '
                   f'fill="#555">{escape(label)}</text>')
    if not values:
        out.append(f'<text x="{width / 2}" y="{top + plot_h / 2}" text-anchor="middle" fill="#888">暂无数据</text>')
    out.append("</svg>")
    return Markup("".join(out))


# --- the map ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    lat: float
    lng: float
    label: str = ""
    kind: str = ""  # town | village | grid | task | task_short | aed


class Projection:
    """Equirectangular around the middle latitude: at a city's size (~50 km) the distortion
    is far below what a dashboard can show."""

    def __init__(self, points: Iterable[tuple[float, float]], width: int, height: int, pad: int = 24) -> None:
        pts = list(points) or [(29.2785, 120.2282)]
        lats, lngs = [p[0] for p in pts], [p[1] for p in pts]
        self.lat0 = (min(lats) + max(lats)) / 2
        k = math.cos(math.radians(self.lat0))
        self.min_x, self.max_x = min(lngs) * k, max(lngs) * k
        self.min_y, self.max_y = min(lats), max(lats)
        self.k = k
        span_x = max(self.max_x - self.min_x, 1e-3)
        span_y = max(self.max_y - self.min_y, 1e-3)
        self.scale = min((width - 2 * pad) / span_x, (height - 2 * pad) / span_y)
        self.off_x = (width - span_x * self.scale) / 2
        self.off_y = (height - span_y * self.scale) / 2

    def __call__(self, lat: float, lng: float) -> tuple[float, float]:
        x = (lng * self.k - self.min_x) * self.scale + self.off_x
        y = (self.max_y - lat) * self.scale + self.off_y
        return round(x, 1), round(y, 1)


def density_cells(cells_res8: Iterable[str | None], res: int = 7) -> dict[str, int]:
    """People per coarser H3 cell (res 7, ~5 km²: a few dozen cells over a town)."""
    out: dict[str, int] = {}
    for c in cells_res8:
        if not c:
            continue
        try:
            parent = h3.cell_to_parent(c, res) if h3.get_resolution(c) > res else c
        except (ValueError, h3.H3BaseException):
            continue
        out[parent] = out.get(parent, 0) + 1
    return out


def map_svg(units: Sequence[Point], tasks: Sequence[Point], aeds: Sequence[Point], density: dict[str, int],
            *, width: int = 760, height: int = 620, title: str = "地图") -> Markup:
    proj = Projection([(p.lat, p.lng) for p in units] or [(p.lat, p.lng) for p in tasks], width, height)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="map" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f6f4ef"/>',
    ]
    peak = max(density.values(), default=0)
    out.append('<g class="density">')
    for c, n in sorted(density.items()):
        ring = h3.cell_to_boundary(c)
        pts = " ".join("{},{}".format(*proj(lat, lng)) for lat, lng in ring)
        opacity = 0.12 + 0.68 * (n / peak) if peak else 0
        out.append(f'<polygon points="{pts}" fill="{RED}" fill-opacity="{opacity:.2f}" stroke="#fff" '
                   f'stroke-width="0.5"><title>{n} 名在册志愿者</title></polygon>')
    out.append("</g><g class=\"units\">")
    for u in units:
        x, y = proj(u.lat, u.lng)
        if u.kind == "grid":
            out.append(f'<circle cx="{x}" cy="{y}" r="1.2" fill="{GREY}"/>')
        elif u.kind == "village":
            out.append(f'<circle cx="{x}" cy="{y}" r="2" fill="#666"><title>{escape(u.label)}</title></circle>')
    for u in units:
        if u.kind in ("town", "city"):
            x, y = proj(u.lat, u.lng)
            out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="#222"/>'
                       f'<text x="{x + 6}" y="{y - 5}" font-size="13" font-weight="bold" fill="#111" '
                       f'stroke="#f6f4ef" stroke-width="3" paint-order="stroke">{escape(u.label)}</text>')
    out.append('</g><g class="aeds">')
    for a in aeds:
        x, y = proj(a.lat, a.lng)
        out.append(f'<g transform="translate({x},{y})"><rect x="-4" y="-4" width="8" height="8" fill="#1b8a3a"/>'
                   f'<path d="M-2.5 0H2.5M0 -2.5V2.5" stroke="#fff" stroke-width="1.6"/>'
                   f'<title>AED {escape(a.label)}</title></g>')
    out.append('</g><g class="tasks">')
    for t in tasks:
        x, y = proj(t.lat, t.lng)
        fill = "#e07b00" if t.kind == "task_short" else "#1f5fbf"
        out.append(f'<path d="M{x} {y - 7}L{x + 5} {y}L{x} {y + 7}L{x - 5} {y}Z" fill="{fill}" stroke="#fff" '
                   f'stroke-width="1"><title>{escape(t.label)}</title></path>')
    out.append("</g>")
    # legend
    ly = height - 70
    out.append(f'<g class="legend" font-size="12" fill="#222"><rect x="8" y="{ly - 14}" width="170" height="78" '
               f'fill="#fff" fill-opacity="0.85" stroke="#ccc"/>'
               f'<rect x="16" y="{ly - 6}" width="12" height="10" fill="{RED}" fill-opacity="0.6"/>'
               f'<text x="34" y="{ly + 3}">志愿者密度（H3）</text>'
               f'<path d="M22 {ly + 10}L27 {ly + 17}L22 {ly + 24}L17 {ly + 17}Z" fill="#1f5fbf"/>'
               f'<text x="34" y="{ly + 21}">班次 / 任务</text>'
               f'<path d="M22 {ly + 28}L27 {ly + 35}L22 {ly + 42}L17 {ly + 35}Z" fill="#e07b00"/>'
               f'<text x="34" y="{ly + 39}">缺人</text>'
               f'<rect x="17" y="{ly + 47}" width="10" height="10" fill="#1b8a3a"/>'
               f'<text x="34" y="{ly + 56}">AED</text></g>')
    out.append("</svg>")
    return Markup("".join(out))
