"""Benchmark scripts refuse to report a figure for something that is wrong."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wrong_deploy(model):
    """A deploy form whose last layer is off: the same shapes, other outputs."""
    broken = copy.deepcopy(model).eval()
    with torch.no_grad():
        list(broken.parameters())[-1].add_(1.0)
    return broken


def test_deploy_latency_exits_1_when_the_deploy_form_is_wrong(monkeypatch, capsys):
    bench = _load("deploy_latency")
    monkeypatch.setattr(bench, "to_deploy", _wrong_deploy)
    assert bench.main(["--presets", "condensenet-86", "--threads", "1", "--runs", "1", "--rounds", "1",
                       "--archs", "0"]) == 1
    captured = capsys.readouterr()
    assert "computes other outputs" in captured.err and "deploy ORT /" not in captured.out


def test_deploy_latency_reports_a_ratio_for_a_correct_deploy_form(capsys):
    bench = _load("deploy_latency")
    assert bench.main(["--presets", "condensenet-86", "--threads", "1", "--runs", "1", "--rounds", "1",
                       "--archs", "2", "--rank-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "deploy ORT / masked ORT" in out and "rank agreement over 2 random architectures" in out
