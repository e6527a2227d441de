"""`python -m search export`: the Pareto front as tables, plots and, on request, deployable models.

Everything comes from the study database (see ``search.study``): the front is
:func:`search.pareto.pareto_front` (trials trained to full fidelity, feasible, not duplicates), and
each member's numbers come from its trial record. Files written to the output folder:

- ``pareto.csv`` / ``pareto.json``: one row/entry per member (trial number, family, knobs, params,
  MACs, validation accuracy, fidelity, test accuracy, latency, objective values); the JSON also
  holds the study name, objectives, directions and the counting conventions.
- ``pareto.html``: interactive plotly scatter, plotly.js inlined so it opens offline.
- ``pareto.png``: the same two panels (accuracy vs MACs, accuracy vs params) drawn with matplotlib.
- with ``models=True``, per member in ``models/``: ``trial_<n>.pt`` (state_dict of the deploy form),
  ``trial_<n>.json`` (what :func:`load_model` needs to rebuild it) and ``trial_<n>.onnx`` where the
  ONNX export works and, if onnxruntime or the onnx package can run the graph, gives the same outputs
  (otherwise the member entry says why there is no ONNX file).

What the trial record must carry (keys of the ``record`` user attribute): ``knobs``, ``params``,
``macs``, ``val_acc``, ``fidelity``, ``epochs``/``fidelity_reached``, optionally ``test_acc``,
``latency_ms``, ``train_params``, ``train_macs``. For models: ``num_classes`` and ``image_size``
(``in_channels`` defaults to 3; ``mean``/``std`` are copied when present), taken from the record or
else from a study user attribute ``data`` holding the same keys; and the deploy weights, found at
``deploy_path`` if recorded, else as ``deploy.pt`` next to ``checkpoint`` (the checkpoint file or
its folder).

Every file is written to a temporary sibling and renamed into place, so a reader (a browser left
open, a script polling the folder) never sees half a file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from search import faults
from search.errors import EffnasError
from search.pareto import FrontMember, front_candidates, objectives_of, pareto_front

__all__ = ["ExportError", "export_study", "load_model", "MODEL_FORMAT"]

MODEL_FORMAT = 1  # layout version of models/trial_<n>.json

_CONVENTIONS = (
    "macs: multiply-accumulates of the deploy form for one image at the study's image size "
    "({size}), counted over Conv2d and Linear layers; params: all parameters of the deploy form; "
    "accuracy: top-1 fraction on the validation split, of the deploy form, at the fidelity given "
    "(dataset subset, image size, epochs); test_accuracy: the same on the test split when it was "
    "evaluated; latency_ms: batch-1 latency of the deploy form when measured."
)
_INPUT_NOTE = ("NCHW float32 images: uint8 pixels / 255, then (x - mean) / std per channel; "
               "output: logits over num_classes")
_ONNX_TOL = 1e-4  # relative to the largest logit: float32 reordering, not a wrong operation
_ONNX_REFERENCE_MAX_MACS = 2e9  # about a minute of onnx.reference time
_CSV_FIELDS = ["trial", "family", "accuracy", "test_accuracy", "params", "macs", "train_params",
               "train_macs", "latency_ms", "epochs_reached"]


class ExportError(EffnasError):
    """The export folder cannot be written, or a model description cannot be read."""


# --- writing files --------------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary sibling, then rename over ``path`` (atomic on POSIX)."""
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the results from other users
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities (e.g. an unmeasured latency objective) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json_text(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"


# --- the front as rows ----------------------------------------------------------------------------

def _data_meta(record: dict, study: optuna.Study) -> dict:
    """Data shape of a trial: the record's keys first, then the study's ``data`` user attribute."""
    merged = {**(study.user_attrs.get("data") or {}), **record}
    keys = ("num_classes", "in_channels", "image_size", "mean", "std")
    return {k: merged[k] for k in keys if merged.get(k) is not None}


def _member_entry(m: FrontMember) -> dict:
    rec = m.record
    reached = rec.get("fidelity_reached", rec.get("epochs"))
    return {
        "trial": m.number,
        "family": m.family,
        "knobs": rec.get("knobs", {}),
        "params": rec.get("params"),
        "macs": rec.get("macs"),
        "train_params": rec.get("train_params"),
        "train_macs": rec.get("train_macs"),
        "accuracy": rec.get("val_acc", m.values.get("accuracy")),
        "test_accuracy": rec.get("test_acc"),
        "latency_ms": rec.get("latency_ms"),
        "fidelity": {**(rec.get("fidelity") or {}), "epochs_reached": reached},
        "objectives": dict(m.values),
        "arch_key": rec.get("arch_key"),
    }


def _csv_text(entries: list[dict], names: list[str], models: bool) -> str:
    extra = ["weights", "onnx"] if models else []
    fields = _CSV_FIELDS + [f"objective_{n}" for n in names] + ["fidelity", "knobs"] + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in _clean(entries):
        row = {k: e.get(k) for k in _CSV_FIELDS if k != "epochs_reached"}
        row["epochs_reached"] = e["fidelity"].get("epochs_reached")
        row.update({f"objective_{n}": e["objectives"].get(n) for n in names})
        row["fidelity"] = json.dumps(e["fidelity"], sort_keys=True)
        row["knobs"] = json.dumps(e["knobs"], sort_keys=True)
        row.update({k: e.get(k) for k in extra})
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


# --- plots ----------------------------------------------------------------------------------------

def _points(study: optuna.Study, front: list[FrontMember]) -> list[dict]:
    """One point per fully trained trial: accuracy, MACs, params, and whether it is on the front."""
    on_front = {m.number for m in front}
    names = objectives_of(study)
    points = []
    for t in front_candidates(study):
        rec = t.user_attrs.get("record", {})
        values = dict(zip(names, t.values or []))
        acc = rec.get("val_acc", values.get("accuracy"))
        if acc is None or rec.get("macs") is None or rec.get("params") is None:
            continue  # a record without costs cannot be placed; the tables still list front members
        points.append({"trial": t.number, "family": t.user_attrs.get("family", rec.get("family", "")),
                       "knobs": rec.get("knobs", {}), "accuracy": float(acc), "macs": rec["macs"],
                       "params": rec["params"], "front": t.number in on_front})
    return points


def _hover(p: dict) -> str:
    knobs = "<br>".join(f"  {k} = {v}" for k, v in p["knobs"].items())
    return (f"trial {p['trial']} ({p['family']})<br>accuracy {p['accuracy']:.4f}<br>"
            f"MACs {p['macs']:,}<br>params {p['params']:,}<br>{knobs}")


def _html(points: list[dict], title: str) -> str:
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


def _png(points: list[dict], title: str) -> bytes:
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


# --- models ---------------------------------------------------------------------------------------

def _deploy_weights_path(record: dict) -> Path | None:
    """Where the trainer left the deploy weights: ``deploy_path``, else deploy.pt by ``checkpoint``."""
    if record.get("deploy_path"):
        return Path(record["deploy_path"])
    ckpt = record.get("checkpoint")
    if not ckpt:
        return None
    ckpt = Path(ckpt)
    folder = ckpt if ckpt.is_dir() or not ckpt.suffix else ckpt.parent
    return folder / "deploy.pt"


def _build_deploy(family: str, knobs: dict, num_classes: int, image_size: int, in_channels: int):
    """Deploy form with the structure the trainer saved: built, masks stepped to the end, converted.

    Built on CPU rather than meta: every buffer then holds real memory, including any a layer keeps
    outside its state_dict, and load_state_dict fills the rest.
    """
    from space.convert import has_schedule, set_progress, to_deploy
    from space.registry import get_family

    fam = get_family(family)
    model = fam.build(fam.knobs_from_dict(knobs), num_classes=num_classes, image_size=image_size,
                      in_channels=in_channels)
    if has_schedule(model):
        set_progress(model, 1.0)  # the deploy structure of a finished training run
    return to_deploy(model).cpu()


def _load_weights(model, path: Path) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()


def _run_onnx(blob: bytes, x, allow_reference: bool):
    """Outputs of the ONNX graph on ``x`` and the runtime used, or (None, why it was not run)."""
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x.numpy()})[0], "onnxruntime"
    except ImportError:
        pass
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        return None, "no ONNX runtime installed (onnxruntime or onnx)"
    if not allow_reference:
        return None, "too large for the pure-Python onnx.reference runtime; install onnxruntime"
    return ReferenceEvaluator(onnx.load_from_string(blob)).run(None, {"input": x.numpy()})[0], "onnx.reference"


def _onnx_bytes(model, image_size: int, in_channels: int, allow_reference: bool = True) -> tuple[bytes, str]:
    """The ONNX graph of ``model`` and a note on how its outputs were checked.

    Raises:
        ValueError: the graph computes other outputs than ``model``. The TorchScript exporter only
            warns about some mistranslations (index_add with repeated indices becomes a scatter that
            overwrites instead of adding), so the outputs are compared whenever a runtime exists.
    """
    import torch

    x = torch.randn(1, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    blob = buf.getvalue()
    try:
        got, runtime = _run_onnx(blob, x, allow_reference)
    except Exception as e:  # a runtime gap says nothing about the graph: keep it, unchecked
        return blob, f"not checked: the runtime failed ({_reason(e)})"
    if got is None:
        return blob, f"not checked: {runtime}"
    with torch.no_grad():
        want = model(x)
    diff = (torch.as_tensor(got) - want).abs().max().item()
    if not diff <= _ONNX_TOL * max(1.0, want.abs().max().item()):
        raise ValueError(f"the ONNX graph computes other outputs than the model (max abs diff {diff:.3g} "
                         f"checked with {runtime}); an operation is mistranslated by the exporter")
    return blob, f"same outputs ({runtime}, max abs diff {diff:.2g})"


def _remove_stale(models_dir: Path, stem: str, suffixes: tuple[str, ...]) -> None:
    """Drop files a previous export left for this trial, so none outlives the entry saying it is absent."""
    for suffix in suffixes:
        (models_dir / f"{stem}{suffix}").unlink(missing_ok=True)


def _export_onnx(entry: dict, model, meta: dict, models_dir: Path, stem: str) -> None:
    # The pure-Python reference runtime is slow on large graphs: it checks only what it runs in seconds.
    allow_reference = (entry.get("macs") or 0) <= _ONNX_REFERENCE_MAX_MACS
    try:
        blob, check = _onnx_bytes(model, meta["image_size"], meta["in_channels"], allow_reference)
    except Exception as e:  # exporter gaps (an op without ONNX symbol, wrong outputs) are not fatal
        _remove_stale(models_dir, stem, (".onnx",))
        entry["onnx"], entry["onnx_error"] = None, _reason(e)
        return
    _write_atomic(models_dir / f"{stem}.onnx", blob)
    entry["onnx"], entry["onnx_check"] = f"models/{stem}.onnx", check


def _model_description(entry: dict, meta: dict, study_name: str, stem: str) -> dict:
    return {
        "format": MODEL_FORMAT, "study": study_name, "trial": entry["trial"], "family": entry["family"],
        "knobs": entry["knobs"], "num_classes": meta["num_classes"], "in_channels": meta["in_channels"],
        "image_size": meta["image_size"], "mean": meta.get("mean"), "std": meta.get("std"),
        "input": _INPUT_NOTE, "weights": f"{stem}.pt", "form": "deploy",
        "accuracy": entry["accuracy"], "params": entry["params"], "macs": entry["macs"],
        "load": f"from search.export import load_model; model = load_model('<export folder>/models/{stem}.json')",
    }


def _missing(entry: dict, reason: str, models_dir: Path, log: Callable[[str], None]) -> None:
    _remove_stale(models_dir, f"trial_{entry['trial']}", (".pt", ".json", ".onnx"))
    entry.update({"weights": None, "model": None, "onnx": None, "weights_error": reason})
    log(f"trial {entry['trial']}: no model exported: {reason}")


def _export_member_model(entry: dict, record: dict, meta: dict, models_dir: Path, study_name: str,
                         log: Callable[[str], None]) -> None:
    """Write trial_<n>.pt/.json/.onnx for one member; a missing or broken part is noted in ``entry``."""
    import torch

    if meta.get("num_classes") is None or meta.get("image_size") is None:
        return _missing(entry, "the record holds no num_classes/image_size (nor does the study's `data` "
                               "attribute), so the network cannot be rebuilt", models_dir, log)
    weights = _deploy_weights_path(record)
    if weights is None or not weights.is_file():
        where = f" at {weights}" if weights is not None else " (the record names no checkpoint)"
        return _missing(entry, f"deploy weights not found{where}", models_dir, log)
    try:
        model = _build_deploy(entry["family"], entry["knobs"], meta["num_classes"], meta["image_size"],
                              meta["in_channels"])
        _load_weights(model, weights)
    except Exception as e:  # a stale or foreign file must not stop the other members' export
        return _missing(entry, f"cannot load {weights}: {_reason(e)}", models_dir, log)
    stem = f"trial_{entry['trial']}"
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    _write_atomic(models_dir / f"{stem}.pt", buf.getvalue())
    _write_atomic(models_dir / f"{stem}.json", _json_text(_model_description(entry, meta, study_name, stem)))
    entry.update({"weights": f"models/{stem}.pt", "model": f"models/{stem}.json"})
    _export_onnx(entry, model, meta, models_dir, stem)
    if entry["onnx"] is None:
        log(f"trial {entry['trial']}: ONNX export skipped: {entry['onnx_error']}")


def load_model(json_path: str | Path):
    """The deploy-form network described by ``models/trial_<n>.json``, weights loaded, in eval mode.

    Args:
        json_path: a model description written by ``python -m search export --models``; its
            ``weights`` file name is resolved next to it.

    Returns:
        The ``nn.Module`` on CPU. It takes ``NCHW`` float images normalised with the description's
        ``mean``/``std`` (pixels / 255 first) and returns logits.

    Raises:
        ExportError: the description cannot be read or lacks a field.
        FileNotFoundError: the weights file is missing.
    """
    path = Path(json_path)
    try:
        desc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the model description {path}: {e}") from None
    required = ("family", "knobs", "num_classes", "image_size", "weights")
    missing = [k for k in required if k not in desc]
    if missing:
        raise ExportError(f"{path}: missing field(s) {missing}; expected a file written by `export --models`")
    weights = path.parent / desc["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: weights file {weights} not found")
    model = _build_deploy(desc["family"], desc["knobs"], desc["num_classes"], desc["image_size"],
                          desc.get("in_channels", 3))
    _load_weights(model, weights)
    return model


# --- the export -----------------------------------------------------------------------------------

def _image_size(front: list[FrontMember], study: optuna.Study) -> int | None:
    for m in front:
        size = m.record.get("image_size") or (m.record.get("fidelity") or {}).get("image_size")
        if size:
            return size
    return (study.user_attrs.get("data") or {}).get("image_size")


def _prepare_dir(out_dir: Path, models: bool) -> Path:
    models_dir = out_dir / "models"
    try:
        (models_dir if models else out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the export folder {out_dir}: {e}; pass --out to a writable place") from None
    return models_dir


def _export_models(study: optuna.Study, front: list[FrontMember], entries: list[dict], models_dir: Path,
                   log: Callable[[str], None]) -> None:
    for entry, m in zip(entries, front):
        meta = {"in_channels": 3, **_data_meta(m.record, study)}
        _export_member_model(entry, m.record, meta, models_dir, study.study_name, log)


def _write_tables_and_plots(study: optuna.Study, front: list[FrontMember], entries: list[dict],
                            out_dir: Path, models: bool) -> dict:
    names = objectives_of(study)
    size = _image_size(front, study)
    doc = {
        "study": study.study_name,
        "objectives": names,
        "directions": [d.name.lower() for d in study.directions],
        "image_size": size,
        "conventions": _CONVENTIONS.format(size=f"{size}x{size}" if size else "not recorded"),
        "n_trained": len(front_candidates(study)),
        "members": entries,
    }
    points = _points(study, front)
    title = f"{study.study_name}: {len(front)} front members of {len(points)} trained trials"
    _write_atomic(out_dir / "pareto.json", _json_text(doc))
    _write_atomic(out_dir / "pareto.csv", _csv_text(entries, names, models))
    faults.checkpoint("exporting")
    _write_atomic(out_dir / "pareto.html", _html(points, title))
    _write_atomic(out_dir / "pareto.png", _png(points, title))
    return doc


def export_study(study: optuna.Study, out_dir: Path, models: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Write the study's Pareto front to ``out_dir`` (see the module docstring for the files).

    Args:
        study: the study, opened from its database.
        out_dir: created if absent; existing files of the same names are replaced atomically.
        models: also write each member's deploy weights, model description and ONNX graph.
        log: where progress lines go.

    Returns:
        The content of ``pareto.json``.

    Raises:
        ExportError: the folder cannot be created or written.
    """
    out_dir = Path(out_dir)
    models_dir = _prepare_dir(out_dir, models)
    front = pareto_front(study)
    entries = [_member_entry(m) for m in front]
    try:
        if models:
            _export_models(study, front, entries, models_dir, log)
        doc = _write_tables_and_plots(study, front, entries, out_dir, models)
    except OSError as e:
        raise ExportError(f"cannot write to the export folder {out_dir}: {e}") from None
    log(f"wrote {len(front)} front members ({doc['n_trained']} fully trained trials) to {out_dir}: "
        f"pareto.csv, pareto.json, pareto.html, pareto.png" + (", models/" if models else ""))
    return _clean(doc)
