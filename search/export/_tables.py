"""The front as rows: one entry per member for ``pareto.json`` and ``pareto.csv``."""
from __future__ import annotations

import csv
import io
import json

import optuna

from search.config import PROXIES
from search.export._files import clean
from search.pareto import FrontMember
from search.record import TrialRecord

__all__ = ["CONVENTIONS", "data_meta", "member_entry", "csv_text"]

CONVENTIONS = (
    "macs: multiply-accumulates of the deploy form for one image at the study's image size "
    "({size}), counted over Conv2d and Linear layers; params: all parameters of the deploy form; "
    "accuracy: top-1 fraction on the validation split, of the deploy form, at the fidelity given "
    "(dataset subset, image size, epochs); test_accuracy: the same on the test split when it was "
    "evaluated; latency_ms: median latency of the deploy form when measured, as latency_setup says "
    "(runtime, threads, batch, device); onnx_latency_ms: the exported ONNX graph's median batch-1 latency "
    "in ONNX Runtime on the exporting machine (export --models)."
)
_CSV_FIELDS = ["trial", "family", "accuracy", "test_accuracy", "params", "macs", "train_params",
               "train_macs", "latency_ms", "epochs_reached"]


_DATA_KEYS = ("num_classes", "in_channels", "image_size", "mean", "std")


def data_meta(record: TrialRecord, study: optuna.Study) -> dict:
    """Data shape of a trial: the record's fields first, then the study's ``data`` user attribute."""
    merged = {**(study.user_attrs.get("data") or {}),
              **{k: getattr(record, k) for k in _DATA_KEYS if getattr(record, k) is not None}}
    return {k: merged[k] for k in _DATA_KEYS if merged.get(k) is not None}


def member_entry(m: FrontMember) -> dict:
    rec = m.record
    reached = rec.fidelity_reached if rec.fidelity_reached is not None else rec.epochs
    return {
        "trial": m.number,
        "family": m.family,
        "knobs": rec.knobs or {},
        "params": rec.params,
        "macs": rec.macs,
        "train_params": rec.train_params,
        "train_macs": rec.train_macs,
        "accuracy": rec.val_acc if rec.val_acc is not None else m.values.get("accuracy"),
        "test_accuracy": rec.test_acc,
        "latency_ms": rec.latency_ms,
        "latency_setup": rec.latency_setup,
        "fidelity": {**(rec.fidelity or {}), "epochs_reached": reached},
        "objectives": dict(m.values),
        "arch_key": rec.arch_key,
        "proxies": dict(rec.proxies or {}),
    }


def csv_text(entries: list[dict], names: list[str], models: bool) -> str:
    extra = ["weights", "onnx", "onnx_max_abs_diff", "onnx_latency_ms"] if models else []
    proxies = [n for n in PROXIES if any(n in e.get("proxies", {}) for e in entries)]
    fields = (_CSV_FIELDS + [f"objective_{n}" for n in names] + [f"proxy_{n}" for n in proxies]
              + ["fidelity", "knobs"] + extra)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in clean(entries):
        row = {k: e.get(k) for k in _CSV_FIELDS if k != "epochs_reached"}
        row["epochs_reached"] = e["fidelity"].get("epochs_reached")
        row.update({f"objective_{n}": e["objectives"].get(n) for n in names})
        row.update({f"proxy_{n}": e.get("proxies", {}).get(n) for n in proxies})
        row["fidelity"] = json.dumps(e["fidelity"], sort_keys=True)
        row["knobs"] = json.dumps(e["knobs"], sort_keys=True)
        row.update({k: e.get(k) for k in extra})
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
