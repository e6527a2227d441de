"""Deployable models of the front: deploy weights, a description that rebuilds each network, and an
ONNX graph checked to compute the same outputs."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.artifacts import is_uri, read_artifact
from search.exceptions import ExportError
from search.export._files import json_text, reason, write_atomic
from search.record import TrialRecord

__all__ = ["MODEL_FORMAT", "export_member_model", "load_model", "load_exported", "ExportedModel"]

MODEL_FORMAT = 1  # layout version of models/trial_<n>.json
_INPUT_NOTE = ("NCHW float32 images: uint8 pixels / 255, then (x - mean) / std per channel; "
               "output: logits over num_classes")
_ONNX_TOL = 1e-4  # relative to the largest logit: float32 reordering, not a wrong operation
_ONNX_REFERENCE_MAX_MACS = 2e9  # about a minute of onnx.reference time


def _deploy_weights_location(record: TrialRecord) -> str | None:
    """Where the trial kept the deploy weights (a path here or a ``search.artifacts`` URI):
    ``deploy_path``, else deploy.pt beside ``checkpoint``."""
    if record.deploy_path:
        return record.deploy_path
    ckpt = record.checkpoint
    if not ckpt:
        return None
    if is_uri(ckpt):
        return ckpt.rsplit("/", 1)[0] + "/deploy.pt"
    path = Path(ckpt)
    folder = path if path.is_dir() or not path.suffix else path.parent
    return str(folder / "deploy.pt")


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


def _load_weights(model, source) -> None:
    """``source``: a weights file, or its bytes."""
    import torch

    state = torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()


def _run_onnx(blob: bytes, x, allow_reference: bool):
    """Outputs of the ONNX graph on ``x`` and the runtime used, or (None, why it was not run)."""
    try:
        from space.onnx import ort_session

        return ort_session(blob).run(None, {"input": x.numpy()})[0], "onnxruntime"
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


def _graph_of(model, image_size: int, in_channels: int) -> tuple[bytes, str]:
    """The ONNX graph of the deploy form as ONNX Runtime runs it best (``space.onnx.to_onnx_form``),
    else of the deploy form as it is, with a note when the lowering failed."""
    from space.onnx import onnx_bytes, to_onnx_form

    try:
        return onnx_bytes(to_onnx_form(model, image_size, in_channels), image_size, in_channels), "lowered"
    except Exception as e:  # the plain deploy form still exports; say why it is the slower graph
        return onnx_bytes(model, image_size, in_channels), f"deploy form as is (lowering failed: {reason(e)})"


def _onnx_checked(model, image_size: int, in_channels: int, inputs, allow_reference: bool) -> tuple[bytes, dict]:
    """The ONNX graph of ``model`` and what checking it found (``onnx_*`` fields of the entry).

    ``inputs``: the normalised images to compare outputs on (None: 8 seeded random images).

    Raises:
        ValueError: the graph computes other outputs than ``model``. The TorchScript exporter only
            warns about some mistranslations (index_add with repeated indices becomes a scatter that
            overwrites instead of adding), so the outputs are compared whenever a runtime exists.
    """
    import torch

    blob, form = _graph_of(model, image_size, in_channels)
    found: dict[str, Any] = {"onnx_form": form, "onnx_checked_on": "validation images" if inputs is not None
                             else "random inputs (no study data given)"}
    x = inputs if inputs is not None else torch.randn(8, in_channels, image_size, image_size,
                                                       generator=torch.Generator().manual_seed(0))
    try:
        got, runtime = _run_onnx(blob, x, allow_reference)
    except Exception as e:  # a runtime gap says nothing about the graph: keep it, unchecked
        return blob, {**found, "onnx_check": f"not checked: the runtime failed ({reason(e)})"}
    if got is None:
        return blob, {**found, "onnx_check": f"not checked: {runtime}"}
    with torch.no_grad():
        want = model(x)
    diff = (torch.as_tensor(got) - want).abs().max().item()
    if not diff <= _ONNX_TOL * max(1.0, want.abs().max().item()):
        raise ValueError(f"the ONNX graph computes other outputs than the model (max abs diff {diff:.3g} "
                         f"checked with {runtime}); an operation is mistranslated by the exporter")
    found.update(onnx_check=f"same outputs ({runtime}, max abs diff {diff:.2g} on {len(x)} images)",
                 onnx_max_abs_diff=diff)
    if runtime == "onnxruntime":
        found.update(_onnx_latency(blob, image_size, in_channels))
    return blob, found


def _onnx_latency(blob: bytes, image_size: int, in_channels: int) -> dict:
    """Batch-1 median latency of the exported graph in ONNX Runtime on this machine, one thread."""
    import numpy as np

    from space.onnx import ort_session
    from trainers.latency import LatencySetup, time_calls

    setup = LatencySetup(runtime="onnxruntime")
    session = ort_session(blob, setup.threads)
    feed = {"input": np.zeros((1, in_channels, image_size, image_size), dtype=np.float32)}
    ms = time_calls(lambda: session.run(None, feed), setup.repeats, setup.warmup)
    return {"onnx_latency_ms": ms, "onnx_latency_setup": setup.as_record()}


def _remove_stale(models_dir: Path, stem: str, suffixes: tuple[str, ...]) -> None:
    """Drop files a previous export left for this trial, so none outlives the entry saying it is absent."""
    for suffix in suffixes:
        (models_dir / f"{stem}{suffix}").unlink(missing_ok=True)


def _export_onnx(entry: dict, model, meta: dict, models_dir: Path, stem: str, inputs=None) -> None:
    # The pure-Python reference runtime is slow on large graphs: it checks only what it runs in seconds.
    allow_reference = (entry.get("macs") or 0) <= _ONNX_REFERENCE_MAX_MACS
    try:
        blob, found = _onnx_checked(model, meta["image_size"], meta["in_channels"], inputs, allow_reference)
    except Exception as e:  # exporter gaps (an op without ONNX symbol, wrong outputs) are not fatal
        _remove_stale(models_dir, stem, (".onnx",))
        entry["onnx"], entry["onnx_error"] = None, reason(e)
        return
    write_atomic(models_dir / f"{stem}.onnx", blob)
    entry["onnx"] = f"models/{stem}.onnx"
    entry.update(found)


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


def export_member_model(entry: dict, record: TrialRecord, meta: dict, models_dir: Path, study_name: str,
                         log: Callable[[str], None], inputs=None) -> None:
    """Write trial_<n>.pt/.json/.onnx for one member; a missing or broken part is noted in ``entry``.

    ``inputs``: normalised validation images of the member's data shape to check the ONNX graph on
    (None: seeded random inputs).
    """
    import torch

    if meta.get("num_classes") is None or meta.get("image_size") is None:
        return _missing(entry, "the record holds no num_classes/image_size (nor does the study's `data` "
                               "attribute), so the network cannot be rebuilt", models_dir, log)
    weights = _deploy_weights_location(record)
    try:
        blob = read_artifact(weights) if weights is not None else None
    except Exception as e:  # an object store that does not answer: this member only
        return _missing(entry, f"cannot read {weights}: {reason(e)}", models_dir, log)
    if blob is None:
        where = f" at {weights}" if weights is not None else " (the record names no checkpoint)"
        return _missing(entry, f"deploy weights not found{where}", models_dir, log)
    try:
        model = _build_deploy(entry["family"], entry["knobs"], meta["num_classes"], meta["image_size"],
                              meta["in_channels"])
        _load_weights(model, blob)
    except Exception as e:  # a stale or foreign file must not stop the other members' export
        return _missing(entry, f"cannot load {weights}: {reason(e)}", models_dir, log)
    stem = f"trial_{entry['trial']}"
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(models_dir / f"{stem}.pt", buf.getvalue())
    write_atomic(models_dir / f"{stem}.json", json_text(_model_description(entry, meta, study_name, stem)))
    entry.update({"weights": f"models/{stem}.pt", "model": f"models/{stem}.json"})
    usable = inputs is not None and tuple(inputs.shape[1:]) == (meta["in_channels"], meta["image_size"],
                                                                  meta["image_size"])
    _export_onnx(entry, model, meta, models_dir, stem, inputs if usable else None)
    if entry["onnx"] is None:
        log(f"trial {entry['trial']}: ONNX export skipped: {entry['onnx_error']}")


@dataclass
class ExportedModel:
    """An exported network with its input contract: what images it takes and how to prepare them.

    ``prepare(images)`` turns uint8 images (NCHW, NHWC, or N x H x W for grey; a numpy array or a
    tensor; any size; 1 or 3 channels) into the float batch the network takes: resized to ``image_size`` as in training
    (bilinear, antialiased), channels matched (grey repeated, or colour averaged), ``/ 255`` and
    normalised with the training split's ``mean``/``std``. ``predict(images)`` returns class indices.
    """

    model: Any
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    description: dict

    def prepare(self, images):
        import numpy as np
        import torch

        from trainers.data import resize_images

        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images (pixels 0-255), got {x.dtype}")
        if x.ndim == 3:  # N x H x W: grey images
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W, C), got {tuple(x.shape)}")
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        if x.shape[1] != self.in_channels:
            x = x.float().mean(1, keepdim=True).round().to(torch.uint8) if self.in_channels == 1 else x.expand(
                -1, self.in_channels, -1, -1)
        x = resize_images(x.contiguous(), self.image_size).float().div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def predict(self, images, batch_size: int = 256):
        import torch

        x = self.prepare(images)
        with torch.no_grad():
            return torch.cat([self.model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def load_exported(json_path: str | Path) -> ExportedModel:
    """:func:`load_model`'s network together with its input contract (see :class:`ExportedModel`)."""
    model, desc = _load(json_path)
    if desc.get("mean") is None or desc.get("std") is None:
        raise ExportError(f"{json_path}: the description holds no mean/std; export the study again")
    return ExportedModel(model, desc["num_classes"], desc.get("in_channels", 3), desc["image_size"],
                         tuple(desc["mean"]), tuple(desc["std"]), desc)


def load_model(json_path: str | Path):
    """The deploy-form network described by ``models/trial_<n>.json``, weights loaded, in eval mode.

    Args:
        json_path: a model description written by ``python -m search export --models``; its
            ``weights`` file name is resolved next to it (an absolute path or one with ``..`` is
            refused: a description never makes it read a file outside its folder).

    Returns:
        The ``nn.Module`` on CPU. It takes ``NCHW`` float images normalised with the description's
        ``mean``/``std`` (pixels / 255 first) and returns logits.

    Raises:
        ExportError: the description cannot be read, lacks a field, or names weights outside its folder.
        FileNotFoundError: the weights file is missing.
    """
    return _load(json_path)[0]


def _weights_beside(path: Path, name: Any) -> Path:
    """The weights file a description names, which must lie in the description's own folder (or
    below it): an absolute path or a ``..`` in a shared or downloaded description would make
    ``load_model`` read whatever file it names."""
    from pathlib import PureWindowsPath  # splits on both separators; its anchor covers "/x", "\\x", "C:x"

    if isinstance(name, str) and name.strip() and "\0" not in name:
        parsed = PureWindowsPath(name)
        if not parsed.anchor and ".." not in parsed.parts:
            return path.parent / name
    raise ExportError(f"{path}: weights {name!r} is not a file name inside the description's folder "
                      f"{path.parent}; a description written by `export --models` names its weights "
                      f"beside it (e.g. \"trial_3.pt\"); refusing to read a file elsewhere")


def _load(json_path: str | Path):
    path = Path(json_path)
    try:
        desc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the model description {path}: {e}") from None
    required = ("family", "knobs", "num_classes", "image_size", "weights")
    missing = [k for k in required if k not in desc]
    if missing:
        raise ExportError(f"{path}: missing field(s) {missing}; expected a file written by `export --models`")
    weights = _weights_beside(path, desc["weights"])
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: weights file {weights} not found")
    model = _build_deploy(desc["family"], desc["knobs"], desc["num_classes"], desc["image_size"],
                          desc.get("in_channels", 3))
    _load_weights(model, weights)
    return model, desc
