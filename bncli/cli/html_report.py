"""``inspect --html``: one self-contained page, a chart per channel (inline SVG)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from bncli.cli.render import (
    channel_flags,
    counted,
    share_warning,
    shown_channels,
    state_document,
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.warn{color:#a40}.flag{color:#c00;font-weight:bold}
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em}
"""


def _chart(mean: float, std: float, data: dict[str, Any] | None) -> str:
    """The state's N(mean, std) density, and the data's if given, as SVG."""
    width, height = 240, 90
    centres = [mean] + ([data["mean"]] if data else [])
    spreads = [std] + ([math.sqrt(max(data["variance"], 0.0))] if data else [])
    spread = max(max(spreads), 1e-12)
    lo = min(c - 4 * spread for c in centres)
    hi = max(c + 4 * spread for c in centres)
    xs = np.linspace(lo, hi, 80)

    def path(mu: float, sigma: float) -> str:
        sigma = max(sigma, spread * 1e-3)
        ys = np.exp(-0.5 * ((xs - mu) / sigma) ** 2) / sigma
        top = ys.max()
        if top > 0:  # a dead channel's spike can fall between the grid's points
            ys = ys / top
        points = " ".join(
            f"{(x - lo) / (hi - lo) * width:.1f},{height - 10 - y * (height - 20):.1f}"
            for x, y in zip(xs, ys, strict=True)
        )
        return points

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{path(mean, std)}"/>',
    ]
    if data:
        points = path(data["mean"], math.sqrt(max(data["variance"], 0.0)))
        parts.append(
            f'<polyline fill="none" stroke="#c50" stroke-dasharray="4 2" stroke-width="2" points="{points}"/>'
        )
    parts.append(f'<text x="2" y="{height - 1}" font-size="9">{lo:.3g}</text>')
    parts.append(
        f'<text x="{width - 2}" y="{height - 1}" font-size="9" text-anchor="end">{hi:.3g}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def render_report(layer: Any, title: str, drift: dict[str, Any] | None) -> str:
    """The report as an HTML string."""
    doc = state_document(layer)
    esc = html.escape
    rows = []
    std = np.sqrt(layer.moving_variance64)
    flags = channel_flags(layer)
    share = layer.initializer_share()
    shown = shown_channels(
        flags, None if not drift else [ch["drift"] for ch in drift["channels"]]
    )
    for c in shown:
        feature = layer.features[c]
        gamma = doc["variables"].get("gamma")
        beta = doc["variables"].get("beta")
        cells = [
            esc(feature),
            f"{layer.moving_mean64[c]:.6g}",
            f"{std[c]:.6g}",
            "-" if gamma is None else f"{gamma[c]:.6g}",
            "-" if beta is None else f"{beta[c]:.6g}",
            f"{share[c]:.2%}",
            f'<span class="flag">{flags[c]}</span>',
        ]
        if drift:
            ch = drift["channels"][c]
            cls = ' class="flag"' if ch["drift"] else ""
            cells += (
                [
                    f"<span{cls}>{ch['mean_shift']:+.3f}</span>",
                    f"{ch['variance_ratio']:.3f}",
                ]
                if ch["count"]
                else ["no data", "no data"]
            )
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    header = [
        "channel",
        "moving mean",
        "moving std",
        "gamma",
        "beta",
        "init share",
        "flag",
    ]
    if drift:
        header += ["mean shift", "var ratio"]
    charts = []
    for c in shown:
        feature = layer.features[c]
        data = drift["channels"][c] if drift else None
        if data is not None and not data["count"]:
            data = None  # no value of this channel in the data: nothing to draw
        charts.append(
            f"<figure>{_chart(float(layer.moving_mean64[c]), float(std[c]), data)}"
            f"<figcaption>{esc(feature)}</figcaption></figure>"
        )
    config = doc["config"]
    warning = share_warning(layer)
    progress = doc["progress"]
    legend = "green: the state's N(moving mean, moving std)" + (
        "; orange dashed: the data's" if drift else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bncli: {esc(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<p>layer <b>{esc(str(config["name"]))}</b>, momentum {config["momentum"]:g}, epsilon {config["epsilon"]:g},
center {config["center"]}, scale {config["scale"]}, policy {esc(layer.dtype_policy.name)},
{"frozen" if not layer.trainable else "trainable"}.</p>
<p>{counted(progress["batches_seen"], "batch", "batches")}, {counted(progress["samples_seen"], "sample")}, {counted(progress["epochs"], "epoch")};
initializer share {doc["initializer_share"]:.4%};
regularization penalties gamma {doc["regularization"]["gamma"]:.6g}, beta {doc["regularization"]["beta"]:.6g}.</p>
{f'<p class="warn">warning: {esc(warning)}</p>' if warning else ""}
{f'<p class="warn">drift in {sum(ch["drift"] for ch in drift["channels"])} channel(s) of {drift["samples"]} samples</p>' if drift else ""}
<table><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr>
{"".join(rows)}</table>
{f"<p>{len(shown)} of {len(flags):,} channels shown (the flagged and drifting ones first); inspect --json lists them all.</p>" if len(shown) < len(flags) else ""}
<p>{legend}</p>
<div class="charts">{"".join(charts)}</div>
</body></html>
"""


def write_report(
    target: Any, layer: Any, title: str, drift: dict[str, Any] | None
) -> None:
    """Write the report to a checked output target, atomically (or as a stream)."""
    from bncli.io.outputs import writing

    data = render_report(layer, title, drift).encode("utf-8")
    with writing(target) as place:
        if isinstance(place, Path):
            place.write_bytes(data)
        else:
            place.write(data)
