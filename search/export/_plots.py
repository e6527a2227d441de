"""The front as pictures: an interactive, self-contained ``pareto.html`` and a ``pareto.png``."""
from __future__ import annotations

import io

import optuna

from search.pareto import FrontMember, front_candidates, objectives_of
from search.record import read_record

__all__ = ["points_of", "html", "png"]


def points_of(study: optuna.Study, front: list[FrontMember], trials: list | None = None) -> list[dict]:
    """One point per fully trained trial: accuracy, MACs, params, and whether it is on the front."""
    on_front = {m.number for m in front}
    names = objectives_of(study)
    points = []
    for t in front_candidates(study, trials):
        rec = read_record(t)
        values = dict(zip(names, t.values or []))
        acc = rec.val_acc if rec.val_acc is not None else values.get("accuracy")
        if acc is None or rec.macs is None or rec.params is None:
            continue  # a record without costs cannot be placed; the tables still list front members
        points.append({"trial": t.number, "family": rec.family, "knobs": rec.knobs or {},
                       "accuracy": float(acc), "macs": rec.macs, "params": rec.params,
                       "front": t.number in on_front})
    return points


def _hover(p: dict) -> str:
    knobs = "<br>".join(f"  {k} = {v}" for k, v in p["knobs"].items())
    return (f"trial {p['trial']} ({p['family']})<br>accuracy {p['accuracy']:.4f}<br>"
            f"MACs {p['macs']:,}<br>params {p['params']:,}<br>{knobs}")


def html(points: list[dict], title: str) -> str:
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("accuracy vs MACs", "accuracy vs params"))
    groups = [("trained", [p for p in points if not p["front"]], None)]
    groups += [(f"front: {fam}", [p for p in points if p["front"] and p["family"] == fam], fam)
               for fam in sorted({p["family"] for p in points if p["front"]})]
    for col, cost in ((1, "macs"), (2, "params")):
        for name, pts, family in groups:
            marker = (dict(color="lightgrey", size=7) if family is None
                      else dict(size=11, line=dict(color="black", width=1)))
            fig.add_trace(go.Scatter(
                x=[p[cost] for p in pts], y=[p["accuracy"] for p in pts], mode="markers", name=name,
                legendgroup=name, showlegend=col == 1, marker=marker, text=[_hover(p) for p in pts],
                hovertemplate="%{text}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(type="log", title_text="MACs" if cost == "macs" else "params", row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", hovermode="closest")
    # Inline plotly.js: the page must open without a network (a cluster node, a laptop on a train).
    return fig.to_html(include_plotlyjs=True, full_html=True, include_mathjax=False)


def png(points: list[dict], title: str) -> bytes:
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    rest = [p for p in points if not p["front"]]
    front = [p for p in points if p["front"]]
    for ax, cost in zip(axes, ("macs", "params")):
        ax.scatter([p[cost] for p in rest], [p["accuracy"] for p in rest], s=18, c="lightgrey",
                   label="trained")
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
    if points:
        axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
