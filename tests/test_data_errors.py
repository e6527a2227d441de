"""Data a study cannot get: one line, exit status 1, nothing written, saying what was tried (the
dataset and the URL) and what to do instead (the folder and file names to put there, which
`download: false` then uses). `validate` never downloads: it names what `run` would fetch.

Nothing is downloaded here: every download URL points at a closed port of this machine, so a
download attempt is refused at once, and `validate` must not even try."""
from __future__ import annotations

import urllib.request

import pytest
import torchvision.datasets as tvd
import yaml

from search.cli import main

CLOSED = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused


@pytest.fixture(autouse=True)
def nowhere(monkeypatch):
    """torchvision's URLs point at a closed local port; the validate cache is off (every answer here
    is computed)."""
    monkeypatch.setattr(tvd.CIFAR10, "url", CLOSED + "cifar-10-python.tar.gz")
    monkeypatch.setattr(tvd.CIFAR100, "url", CLOSED + "cifar-100-python.tar.gz")
    monkeypatch.setattr(tvd.MNIST, "mirrors", [CLOSED + "mnist/"])
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [CLOSED + "fashion/"])
    monkeypatch.setenv("EFFNAS_CACHE", "off")


def _study(tmp_path, dataset: str, download: bool):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "nodata", "data": {"dataset": dataset, "root": "data", "download": download, "val_size": 100},
        "families": {"rsnet": {}}, "budget": {"n_trials": 1}, "fidelity": {"epochs": 1}}))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("dataset,url,layout", [
    ("cifar100", CLOSED + "cifar-100-python.tar.gz", ["cifar-100-python (files train, test)", "train.npz and test.npz"]),
    ("cifar10", CLOSED + "cifar-10-python.tar.gz",
     ["cifar-10-batches-py (files data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch)"]),
    ("mnist", CLOSED + "mnist/train-images-idx3-ubyte.gz",
     ["MNIST/raw with the four uncompressed idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
      "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"]),
])
def test_a_failed_download_says_what_was_tried_and_what_to_do(dataset, url, layout, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path, dataset, download=True)
    assert main(["run", str(path)]) == 1
    line = _one_error_line(capsys)
    assert f"{path}: data: could not download {dataset} from {url} (" in line
    assert "Connection refused" in line
    assert str(tmp_path / "data") in line and all(part in line for part in layout)
    assert "with `download: false` they are used and nothing is downloaded" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no run folder, no empty data folder


def test_validate_never_downloads_and_says_what_run_would_fetch(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("validate tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path, "cifar100", download=True)
    assert main(["validate", str(path), "--samples", "5"]) == 1
    line = _one_error_line(capsys)
    assert f"{path}: data: cifar100 is not in {tmp_path / 'data'} yet, and validate downloads nothing" in line
    assert f"`run` would download it from {CLOSED}cifar-100-python.tar.gz (download: true)" in line
    assert "cifar-100-python (files train, test)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_missing_files_without_download_name_the_folder_and_the_switch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path, "cifar100", download=False)
    for command in ("run", "validate"):
        assert main([command, str(path)]) == 1
        line = _one_error_line(capsys)
        assert "cifar100 not found: looked for" in line and "cifar-100-python" in line
        assert "set `download: true`" in line
