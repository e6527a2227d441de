"""Files effnas reads that someone else may have written, and files it writes next to other writers.

- CIFAR batches under ``data.root`` are read by an unpickler that builds only what the official
  batches hold: a file that would run code is refused, naming the file, and runs nothing.
- ``load_model`` reads the weights a description names only from the description's own folder.
- Every temporary file of an artifact write is that write's own.

(The warm-start source database opened read-only is in ``test_warm_start.py``.)
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import threading

import numpy as np
import pytest
import torch

from search.artifacts import trial_artifacts
from search.exceptions import ExportError
from search.export import load_model
from trainers.data import DataConfig, load_data

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": f"batch {seed}", "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the official batches: str as (SHORT_)BINSTRING, which
    ``encoding="bytes"`` reads as bytes, and numpy under its old module name ``numpy.core``."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _official(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar10_folder(tmp_path, write) -> dict:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {name: _batch(4, seed) for seed, name in enumerate(CIFAR10_FILES)}
    for name, batch in batches.items():
        (folder / name).write_bytes(write(batch))
    return batches


@pytest.mark.parametrize("write", [
    _official,  # the official files' own form
    lambda b: pickle.dumps({k.encode(): ([x.encode() for x in v] if k == "filenames" else
                                         v.encode() if isinstance(v, str) else v) for k, v in b.items()}),  # today's pickle
    lambda b: pickle.dumps({k.encode(): v for k, v in b.items()}, protocol=2),  # protocol 2 from Python 3
])
def test_cifar_batches_in_the_official_layout_read(tmp_path, write):
    batches = _cifar10_folder(tmp_path, write)
    d = load_data(DataConfig("cifar10", root=str(tmp_path), val_size=0))
    test = batches["test_batch"]
    assert torch.equal(d.test_x, torch.from_numpy(test["data"].reshape(-1, 3, 32, 32)))
    assert d.test_y.tolist() == test["labels"] and len(d.train_y) == 20


class _Creates:
    """Unpickled, this opens (creates) ``path``: what a hostile batch file could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    _cifar10_folder(tmp_path, _official)
    marker = tmp_path / "ran"
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    evil.write_bytes(pickle.dumps({b"data": _Creates(marker), b"labels": [0]}))
    with pytest.raises(ValueError, match=rf"{evil}: not an official CIFAR python batch file \(it refers to "
                                         rf"io.open"):
        load_data(DataConfig("cifar10", root=str(tmp_path), val_size=0))
    assert not marker.exists()


@pytest.mark.parametrize("entry, match", [
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"must be a uint8 N x 3072 array, got a float32"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"must be a list of 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"expected a dict with b'data' and b'labels'"),
    ({b"data": np.array([None, None]), b"labels": [0, 1]}, r"must be a uint8 N x 3072 array, got a object array"),
])
def test_a_cifar_batch_in_another_format_is_refused_naming_the_file(tmp_path, entry, match):
    _cifar10_folder(tmp_path, _official)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=rf"{bad}: not an official CIFAR python batch file \(.*({match})"):
        load_data(DataConfig("cifar10", root=str(tmp_path), val_size=0))


# --- load_model ------------------------------------------------------------------------------------

SLIM = {"family": "slimconv", "knobs": {"layers": [1, 1, 1, 1], "base_width": 8, "stem": "cifar"},
        "num_classes": 10, "image_size": 8, "in_channels": 1}


@pytest.mark.parametrize("where", ["../elsewhere.pt", "{outside}", "models/../../elsewhere.pt", "..\\elsewhere.pt"])
def test_load_model_reads_weights_only_from_the_descriptions_folder(tmp_path, where):
    from search.export._models import _build_deploy

    model = _build_deploy(SLIM["family"], SLIM["knobs"], SLIM["num_classes"], SLIM["image_size"], SLIM["in_channels"])
    outside = tmp_path / "elsewhere.pt"
    torch.save(model.state_dict(), outside)  # valid weights: followed, they would load
    folder = tmp_path / "export" / "models"
    folder.mkdir(parents=True)
    desc = folder / "trial_1.json"
    desc.write_text(json.dumps({**SLIM, "weights": where.format(outside=outside)}))
    with pytest.raises(ExportError, match=r"trial_1.json: weights .* is not a file name inside the description's folder"):
        load_model(desc)

    torch.save(model.state_dict(), folder / "trial_1.pt")  # beside it: loads
    desc.write_text(json.dumps({**SLIM, "weights": "trial_1.pt"}))
    assert not load_model(desc).training


# --- temporary files of artifact writes -------------------------------------------------------------

class _BothOpenFirst:
    """A filesystem whose writers wait for each other after opening their temporary file, so two
    writes of one artifact overlap the way a slow network store makes them."""

    def __init__(self, inner, barrier: threading.Barrier):
        self.inner, self.barrier, self.opened = inner, barrier, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def open_output_stream(self, path):
        stream = self.inner.open_output_stream(path)
        self.opened.append(path)
        self.barrier.wait()
        return stream


def test_two_writes_of_one_artifact_use_their_own_temporary_files(tmp_path):
    location = (tmp_path / "store" / "trial").as_uri()
    barrier = threading.Barrier(2, timeout=20)
    blobs = [b"a" * 100_000, b"b" * 50_000]
    writers, errors = [], []
    for blob in blobs:
        art = trial_artifacts(location)
        (tmp_path / art.local_dir / "deploy.pt").write_bytes(blob)
        art.fs = _BothOpenFirst(art.fs, barrier)
        writers.append(art)

    def store(art) -> None:
        try:
            art.store("deploy.pt")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=store, args=(art,)) for art in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert writers[0].fs.opened != writers[1].fs.opened
    assert (tmp_path / "store" / "trial" / "deploy.pt").read_bytes() in blobs  # one whole write, not a mix
    assert [p.name for p in (tmp_path / "store" / "trial").iterdir()] == ["deploy.pt"]  # no temporary left
    for art in writers:
        art.close()
