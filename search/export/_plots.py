"""The front as pictures: an interactive, self-contained ``pareto.html`` and a ``pareto.png``.

Nothing of effnas or Optuna is imported at module level: the process that draws ``pareto.png``
(``_png_worker.py``) loads this file alone, with matplotlib and nothing else."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from search.pareto import FrontMember

__all__ = ["points_of", "html", "png"]


def points_of(study: optuna.Study, front: list[FrontMember], trials: list | None = None) -> list[dict]:
    """One point per fully trained trial: accuracy, MACs, params, and whether it is on the front.
    Knobs are given where a hover shows them (every point up to _KNOBS_IN_HOVER_UP_TO, else the
    front members): decoding 100,000 of them for nothing costs seconds."""
    from search.pareto import front_candidates, objectives_of
    from search.storage._reader import facts_of, knobs_of

    on_front = {m.number for m in front}
    names = objectives_of(study)
    points, facts = [], []
    for t in front_candidates(study, trials):
        rec = facts_of(t)  # the record's figures: whole records of every trial are not needed here
        values = dict(zip(names, t.values or []))
        acc = rec["val_acc"] if rec.get("val_acc") is not None else values.get("accuracy")
        if acc is None or rec.get("macs") is None or rec.get("params") is None:
            continue  # a record without costs cannot be placed; the tables still list front members
        points.append({"trial": t.number, "family": rec["family"], "knobs": {}, "accuracy": float(acc),
                       "macs": rec["macs"], "params": rec["params"], "front": t.number in on_front})
        facts.append(rec)
    every = len(points) <= _KNOBS_IN_HOVER_UP_TO
    for p, rec in zip(points, facts):
        if every or p["front"]:
            p["knobs"] = knobs_of(rec)
    return points


_KNOBS_IN_HOVER_UP_TO = 2000  # trained points whose hover lists their knobs; above, front members only
_WEBGL_FROM = 2000             # grey points drawn with WebGL (scattergl) from this many on


def _hover(p: dict, knobs: bool = True) -> str:
    text = (f"trial {p['trial']} ({p['family']})<br>accuracy {p['accuracy']:.4f}<br>"
            f"MACs {p['macs']:,}<br>params {p['params']:,}")
    return text + ("<br>" + "<br>".join(f"  {k} = {v}" for k, v in p["knobs"].items()) if knobs and p["knobs"] else "")


def _trace(pts: list[dict], cost: str, name: str, family: str | None, axis: int, knobs: bool,
           texts: list[str]) -> dict:
    """One scatter trace as plain data: plotly's figure classes validate every value, which costs
    seconds at 100,000 points. ``texts``: the points' hover texts (the same on both axes)."""
    grey = family is None
    return {"type": "scattergl" if grey and len(pts) >= _WEBGL_FROM else "scatter",
            "x": [p[cost] for p in pts], "y": [p["accuracy"] for p in pts], "mode": "markers", "name": name,
            "legendgroup": name, "showlegend": axis == 1, "xaxis": f"x{axis if axis > 1 else ''}", "yaxis": "y",
            "marker": {"color": "lightgrey", "size": 7} if grey else {"size": 11, "line": {"color": "black", "width": 1}},
            "text": texts, "hovertemplate": "%{text}<extra></extra>"}


def html(points: list[dict], title: str, curve: dict | None = None) -> str:
    """Accuracy against MACs and against params (one point per trained trial), and the front's
    hypervolume over active wall time (``curve``, from ``search.pareto.hypervolume_over_time``)."""
    knobs = len(points) <= _KNOBS_IN_HOVER_UP_TO
    groups = [("trained", [p for p in points if not p["front"]], None)]
    groups += [(f"front: {fam}", [p for p in points if p["front"] and p["family"] == fam], fam)
               for fam in sorted({p["family"] for p in points if p["front"]})]
    texts = [[_hover(p, knobs or family is not None) for p in pts] for _, pts, family in groups]
    data = [_trace(pts, cost, name, family, axis, knobs, hover)
            for axis, cost in ((1, "macs"), (2, "params")) for (name, pts, family), hover in zip(groups, texts)]
    if curve:
        data.append({"type": "scatter", "mode": "lines+markers", "line": {"shape": "hv"}, "x": curve["seconds"],
                     "y": curve["hypervolume"], "xaxis": "x3", "yaxis": "y2", "name": "front hypervolume",
                     "showlegend": False, "hovertemplate": "%{y:.4f} after %{x:.0f} s<extra></extra>"})
    layout = {
        "title": {"text": title}, "template": _plotly_file("templates", "plotly_white.json", json=True), "hovermode": "closest",
        "xaxis": {"type": "log", "title": {"text": "MACs"}, "domain": [0.0, 0.3]},
        "xaxis2": {"type": "log", "title": {"text": "params"}, "domain": [0.35, 0.65]},
        "xaxis3": {"title": {"text": "active wall time (s)"}, "domain": [0.72, 1.0], "anchor": "y2"},
        "yaxis": {"title": {"text": "validation accuracy"}},
        "yaxis2": {"title": {"text": "front hypervolume"}, "anchor": "x3"},
        "annotations": [{"text": text, "x": x, "y": 1.0, "xref": "paper", "yref": "paper", "showarrow": False,
                         "xanchor": "center", "yanchor": "bottom", "font": {"size": 16}}
                        for text, x in (("accuracy vs MACs", 0.15), ("accuracy vs params", 0.5),
                                        ("front hypervolume over time", 0.86))],
    }
    return _page(data, layout, title)


def _plotly_file(*parts: str, json: bool = False):
    """A file of plotly's package data (plotly.js, a template), read without importing plotly:
    its figure classes cost a third of a second to import, and the page needs none of them."""
    import importlib.util
    import json as json_
    import os

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.origin:
        raise ModuleNotFoundError("plotly is not installed (pip install plotly): pareto.html embeds its plotly.js")
    with open(os.path.join(os.path.dirname(spec.origin), "package_data", *parts), encoding="utf-8") as f:
        return json_.load(f) if json else f.read()


def _page(data: list, layout: dict, title: str) -> str:
    """One self-contained page: plotly.js inlined (it must open without a network: a cluster node,
    a laptop on a train) and the figure drawn by ``Plotly.newPlot``."""
    import html as html_
    import json

    # "</" inside a script's JSON would end the script early: escaped, the JSON reads the same.
    # NaN and Infinity, which JSON lacks, are JavaScript's own names.
    figure = ", ".join(json.dumps(part, separators=(",", ":"), default=_plain).replace("</", "<\\/")
                       for part in (data, layout, {"responsive": True}))
    return ("<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\" />"
            f"<title>{html_.escape(title)}</title></head>\n"
            "<body style=\"margin:0\">\n"
            f"<script type=\"text/javascript\">{_plotly_file('plotly.min.js')}</script>\n"
            "<div id=\"pareto\" class=\"plotly-graph-div\" style=\"height:100vh; width:100%;\"></div>\n"
            f"<script type=\"text/javascript\">Plotly.newPlot(\"pareto\", {figure});</script>\n"
            "</body>\n</html>\n")


def _plain(value):
    """numpy scalars and arrays as JSON writes Python's own."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def png(points: list[dict], title: str, curve: dict | None = None) -> bytes:
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(17, 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    axes[1].sharey(axes[0])
    axes[1].tick_params(labelleft=False)
    hv_ax, axes = axes[2], axes[:2]
    rest = [p for p in points if not p["front"]]
    front = [p for p in points if p["front"]]
    import numpy as np

    for ax, cost in zip(axes, ("macs", "params")):
        # Arrays, not lists: matplotlib masks a list element by element (seconds at 100,000 points).
        ax.scatter(np.asarray([p[cost] for p in rest], dtype=float), np.asarray([p["accuracy"] for p in rest], dtype=float),
                   s=18, c="lightgrey", label="trained", rasterized=True)
        for fam in sorted({p["family"] for p in front}):
            pts = [p for p in front if p["family"] == fam]
            ax.scatter([p[cost] for p in pts], [p["accuracy"] for p in pts], s=45, edgecolors="black",
                       label=f"front: {fam}", zorder=3)
        if points and min(p[cost] for p in points) > 0:
            ax.set_xscale("log")
            # Minor-tick labels of a log axis spanning a few decades overlap: label decades only.
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MACs" if cost == "macs" else "params")
        ax.set_title(f"accuracy vs {'MACs' if cost == 'macs' else 'params'}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    if curve:
        hv_ax.step(curve["seconds"], curve["hypervolume"], where="post")
    hv_ax.set_xlabel("active wall time (s)")
    hv_ax.set_ylabel("front hypervolume")
    hv_ax.set_title("front hypervolume over time")
    hv_ax.grid(alpha=0.3)
    if points:
        axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    # Fixed margins: tight_layout measures every artist (half a second at 10,000 points) for these.
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.11, top=0.86, wspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
