"""`python -m search export`: the Pareto front as tables, plots and, on request, deployable models.

Everything comes from the study database (see ``search.record``): the front is
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

from pathlib import Path
from typing import Callable

import optuna

from search import faults
from search.exceptions import ExportError
from search.export._files import clean, json_text, write_atomic
from search.export._models import MODEL_FORMAT, ExportedModel, export_member_model, load_exported, load_model
from search.export._plots import html, points_of
from search.export._tables import CONVENTIONS, csv_text, data_meta, member_entry
from search.pareto import (FrontMember, front_candidates, front_hypervolumes, hypervolume_over_time, objectives_of,
                           simulated_seconds,
                           pareto_front)
from search.seed_report import seed_entries
from trainers.atomic import remove_stale_temp_files

__all__ = ["ExportError", "export_study", "load_model", "load_exported", "ExportedModel", "MODEL_FORMAT"]


def _image_size(front: list[FrontMember], study: optuna.Study) -> int | None:
    for m in front:
        size = m.record.image_size or (m.record.fidelity or {}).get("image_size")
        if size:
            return size
    return (study.user_attrs.get("data") or {}).get("image_size")


def _prepare_dir(out_dir: Path, models: bool) -> Path:
    models_dir = out_dir / "models"
    try:
        (models_dir if models else out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the export folder {out_dir}: {e}; pass --out to a writable place") from None
    remove_stale_temp_files(out_dir)  # what an export killed mid-write left
    return models_dir


def _export_models(study: optuna.Study, front: list[FrontMember], entries: list[dict], models_dir: Path,
                   log: Callable[[str], None], check_images) -> None:
    for entry, m in zip(entries, front):
        meta = {"in_channels": 3, **data_meta(m.record, study)}
        export_member_model(entry, m.record, meta, models_dir, study.study_name, log, check_images)


def _write_tables_and_plots(study: optuna.Study, front: list[FrontMember], entries: list[dict],
                            out_dir: Path, models: bool, trials: list, drawing) -> dict:
    names = objectives_of(study)
    size = _image_size(front, study)
    doc = {
        "study": study.study_name,
        "objectives": names,
        "directions": [d.name.lower() for d in study.directions],
        "image_size": size,
        "conventions": CONVENTIONS.format(size=f"{size}x{size}" if size else "not recorded"),
        "n_trained": len(front_candidates(study, trials)),
        "members": entries,
    }
    simulated = simulated_seconds(trials)
    if simulated is not None:  # the study ran on the simulated backend: its clock, not this machine's
        doc["simulated_seconds"] = simulated
    curve = hypervolume_over_time(study, trials)
    doc["hypervolume_over_time"] = curve
    seeds = seed_entries(study, front, trials)
    if seeds:
        doc["seeds"] = seeds
        doc["hypervolume"] = front_hypervolumes(study, front, seeds)
    points = points_of(study, front, trials)
    title = f"{study.study_name}: {len(front)} front members of {len(points)} trained trials"
    drawing.send(points, title, curve)  # the picture is drawn meanwhile, in its own process
    write_atomic(out_dir / "pareto.json", json_text(doc))
    write_atomic(out_dir / "pareto.csv", csv_text(entries, names, models))
    faults.checkpoint("exporting")
    write_atomic(out_dir / "pareto.html", html(points, title, curve))
    write_atomic(out_dir / "pareto.png", drawing.result())
    return doc


def _export(study: optuna.Study, out_dir: Path, models: bool, log: Callable[[str], None], storage_url: str | None,
            check_images, drawing) -> tuple[list[FrontMember], list[dict], dict]:
    models_dir = _prepare_dir(out_dir, models)
    from search.storage import read_trials

    trials = read_trials(study, storage_url)
    front = pareto_front(study, trials, storage_url)
    entries = [member_entry(m) for m in front]
    try:
        if models:
            _export_models(study, front, entries, models_dir, log, check_images)
        return front, entries, _write_tables_and_plots(study, front, entries, out_dir, models, trials, drawing)
    except OSError as e:
        raise ExportError(f"cannot write to the export folder {out_dir}: {e}") from None


def export_study(study: optuna.Study, out_dir: Path, models: bool = False,
                 log: Callable[[str], None] = print, storage_url: str | None = None, check_images=None,
                 drawing=None) -> dict:
    """Write the study's Pareto front to ``out_dir`` (see the module docstring for the files).

    Args:
        study: the study, opened from its database.
        out_dir: created if absent; existing files of the same names are replaced atomically.
        models: also write each member's deploy weights, model description and ONNX graph.
        log: where progress lines go.
        storage_url: the study's database URL: its trials are then read with a few SQL queries
            (``search.storage.read_trials``) instead of Optuna's full materialisation.
        check_images: normalised validation images (a float NCHW tensor) that each ONNX graph's
            outputs are compared on, against the PyTorch deploy form (None: seeded random inputs).
        drawing: the process drawing ``pareto.png`` (``search.export._png.start()``), started by
            the caller before it read the study so that matplotlib loads meanwhile (None: started here).

    Returns:
        The content of ``pareto.json``.

    Raises:
        ExportError: the folder cannot be created or written, or ``models`` was asked for and not
            one front member's model could be written (the tables are written first).
    """
    from search.export import _png

    out_dir, drawing = Path(out_dir), drawing or _png.start()
    try:
        front, entries, doc = _export(study, out_dir, models, log, storage_url, check_images, drawing)
    finally:
        drawing.stop()
    log(f"wrote {len(front)} front members ({doc['n_trained']} fully trained trials) to {out_dir}: "
        f"pareto.csv, pareto.json, pareto.html, pareto.png" + (", models/" if models else ""))
    if models and entries and not any(e.get("weights") for e in entries):
        # Asked for models and got none: the tables are written, but this is no success.
        raise ExportError(f"--models wrote no model: none of the {len(entries)} front members' deploy weights could "
                          f"be read here (trial {entries[0]['trial']}: {entries[0].get('weights_error')}); "
                          f"export on a machine that sees the run directory the workers wrote to")
    hv = doc.get("hypervolume")
    if hv:
        log(f"hypervolume ({hv['space']}): front {hv['front']:.4f}, seeds alone {hv['seeds']:.4f}; "
            f"{sum(s['dominated_by'] is not None for s in doc['seeds'])} of {len(doc['seeds'])} seeds dominated")
    return clean(doc)
