"""`python -m search export`: front, tables, plots and model files of a study built by hand."""
from __future__ import annotations

import csv
import io
import json
import random
import re
import struct
from pathlib import Path

import onnx
import optuna
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

import space  # noqa: F401  (registers every family; an import error is a test error)
from search.export import ExportError, export_study, load_model
from search.export._files import write_atomic as _write_atomic
from space.layers import CondensedReactivation
from space.registry import get_family, list_families

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = ["accuracy", "macs", "params"]
DIRECTIONS = ["maximize", "minimize", "minimize"]
FIDELITY = {"dataset": "cifar10", "train_size": 500, "val_size": 100, "image_size": 32, "epochs": 3,
            "batch_size": 64, "lr": 0.1, "seed": 0}
DATA = {"num_classes": 10, "image_size": 32, "in_channels": 3, "mean": [0.49, 0.48, 0.45],
        "std": [0.25, 0.24, 0.26]}


# One distribution for every trial: Optuna refuses a parameter whose choices change between trials.
_FAMILY_DIST = CategoricalDistribution(["alpha", "beta", "fam", *sorted(list_families())])


def _new_study(folder: Path, name: str = "export-test") -> optuna.Study:
    url = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=url, directions=DIRECTIONS)
    study.set_user_attr("objectives", OBJECTIVES)
    return study


def _add(study: optuna.Study, status: str, values: list[float] | None, family: str = "fam",
         state: TrialState = TrialState.COMPLETE, **record) -> None:
    rec = {"family": family, "knobs": {"width": len(study.trials)}, "arch_key": f"k{len(study.trials)}",
           "fidelity": FIDELITY, **DATA, **record}
    if values is not None and len(values) == 3:  # the record the objective values came from
        rec = {"val_acc": values[0], "macs": int(values[1]), "params": int(values[2]), **rec}
    rec.setdefault("epochs", FIDELITY["epochs"])
    rec.setdefault("fidelity_reached", rec["epochs"])
    attrs = {"status": status, "family": family, "constraints": [0.0], "record": rec}
    study.add_trial(create_trial(
        state=state, values=values if state == TrialState.COMPLETE else None,
        params={"family": family}, distributions={"family": _FAMILY_DIST},
        user_attrs=attrs))


def _brute_force_front(points: dict[int, list[float]]) -> set[int]:
    """Trial numbers no other point dominates (maximise accuracy, minimise the costs)."""
    def better_or_equal(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]

    return {n for n, p in points.items()
            if not any(better_or_equal(q, p) and q != p for m, q in points.items() if m != n)}


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory) -> tuple[optuna.Study, dict[int, list[float]], str]:
    """30 trained trials (with ties) plus outcomes that must never reach the front (read-only);
    also the study's storage URL."""
    folder = tmp_path_factory.mktemp("mixed")
    study = _new_study(folder)
    rng = random.Random(7)
    trained: dict[int, list[float]] = {}
    for i in range(30):
        values = [round(rng.uniform(0.3, 0.9), 2), float(rng.randrange(1, 20) * 1_000_000),
                  float(rng.randrange(1, 20) * 10_000)]
        if i == 29:
            values = list(trained[max(trained, key=lambda n: trained[n][0])])  # an exact tie
        trained[len(study.trials)] = values
        _add(study, "trained", values, family="alpha" if i % 2 else "beta", test_acc=values[0] - 0.01)
    best = [0.99, 1.0, 1.0]  # would dominate everything if it were counted
    _add(study, "infeasible", best)
    _add(study, "duplicate", best)
    _add(study, "stopped", None, state=TrialState.PRUNED, val_acc=0.99, macs=1, params=1)
    _add(study, "stopped", best)  # never written COMPLETE by the runner, but the status alone must exclude it
    _add(study, "failed", None, state=TrialState.FAIL, failure_reason="boom")
    return study, trained, f"sqlite:///{folder / 'study.db'}"


def test_front_matches_brute_force_and_tables(mixed_study, tmp_path: Path):
    study, trained, _ = mixed_study
    lines: list[str] = []
    doc = export_study(study, tmp_path / "out", log=lines.append)
    expected = _brute_force_front(trained)
    assert {m["trial"] for m in doc["members"]} == expected
    assert len(doc["members"]) == len(expected) and len(expected) >= 3
    assert doc["n_trained"] == 30 and "front members" in lines[-1]

    on_disk = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert on_disk == doc
    assert on_disk["study"] == "export-test"
    assert on_disk["objectives"] == OBJECTIVES and on_disk["directions"] == DIRECTIONS
    assert "multiply-accumulates" in on_disk["conventions"] and "32x32" in on_disk["conventions"]
    for m in on_disk["members"]:
        v = trained[m["trial"]]
        assert m["objectives"] == dict(zip(OBJECTIVES, v))
        assert (m["accuracy"], m["macs"], m["params"]) == (v[0], int(v[1]), int(v[2]))
        assert m["test_accuracy"] == pytest.approx(v[0] - 0.01)
        assert m["fidelity"] == {**FIDELITY, "epochs_reached": 3}
        assert m["knobs"] == {"width": m["trial"]} and m["family"] in ("alpha", "beta")
        assert "weights" not in m

    with open(tmp_path / "out" / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [m["trial"] for m in doc["members"]]
    for r in rows:
        v = trained[int(r["trial"])]
        assert float(r["objective_accuracy"]) == v[0] and int(r["macs"]) == int(v[1])
        assert json.loads(r["knobs"]) == {"width": int(r["trial"])}
        assert json.loads(r["fidelity"])["epochs_reached"] == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pareto.csv", "pareto.html", "pareto.json", "pareto.png"]  # no temporary files left


def test_the_sql_reader_gives_what_optunas_api_gives(mixed_study, tmp_path: Path, monkeypatch):
    """status and export read through effnas's SQL reader and through get_trials (the public-API
    fallback): the same trials, figures, front and files."""
    from search.status import status_dict
    from search.storage import StoredTrial, read_trials
    from search.storage import _optuna_compat as compat

    study, trained, url = mixed_study
    fast, slow = read_trials(study, url), study.get_trials(deepcopy=False)
    assert all(isinstance(t, StoredTrial) for t in fast)
    assert [(t.number, t.state, t.values, t.user_attrs, t.datetime_start, t.datetime_complete) for t in fast] == \
        [(t.number, t.state, t.values, t.user_attrs, t.datetime_start, t.datetime_complete) for t in slow]
    a = status_dict(study, url)
    doc_fast = export_study(study, tmp_path / "fast", log=lambda _: None, storage_url=url)
    monkeypatch.setattr(compat, "FORCE_PUBLIC", True)  # no engine found: Optuna's API
    assert not any(isinstance(t, StoredTrial) for t in read_trials(study))
    b = status_dict(study)
    doc_slow = export_study(study, tmp_path / "slow", log=lambda _: None)
    a.pop("driver_running"), b.pop("driver_running")
    assert a == b and {m["trial"] for m in a["pareto"]} == _brute_force_front(trained)
    assert doc_fast == doc_slow
    assert (tmp_path / "fast" / "pareto.csv").read_text() == (tmp_path / "slow" / "pareto.csv").read_text()


def test_all_infeasible_study_has_an_empty_front(tmp_path: Path):
    from search.status import status_dict

    study = _new_study(tmp_path)
    for _ in range(3):
        _add(study, "infeasible", [0.0, 1e9, 1e8])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert status_dict(study, url)["pareto"] == []
    assert export_study(study, tmp_path / "out", log=lambda _: None, storage_url=url)["members"] == []


def test_html_is_self_contained_and_png_valid(mixed_study, tmp_path: Path):
    study, trained, _ = mixed_study
    doc = export_study(study, tmp_path, log=lambda _: None)
    html = (tmp_path / "pareto.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page must not load scripts from the network"
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inlined
    for m in doc["members"]:
        assert f"trial {m['trial']} ({m['family']})" in html
    for n in trained:  # every trained trial is a point (grey or highlighted)
        assert f"trial {n} (" in html
    assert "front: alpha" in html and "width = " in html

    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > height > 100


def test_empty_study_and_unmeasured_latency(tmp_path: Path):
    study = optuna.create_study(study_name="lat", storage=f"sqlite:///{tmp_path / 's.db'}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "latency"])
    doc = export_study(study, tmp_path / "empty", log=lambda _: None)
    assert doc["members"] == [] and (tmp_path / "empty" / "pareto.png").stat().st_size > 0
    _add(study, "trained", [0.5, float("inf")], macs=10, params=5)  # latency objective without a measurement
    doc = export_study(study, tmp_path / "one", log=lambda _: None)
    assert doc["members"][0]["objectives"] == {"accuracy": 0.5, "latency": None}
    text = (tmp_path / "one" / "pareto.json").read_text()
    assert "Infinity" not in text and json.loads(text)["image_size"] == 32


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch):
    target = tmp_path / "pareto.json"
    _write_atomic(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("trainers.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["pareto.json"]


def test_unwritable_folder_is_a_clear_error(mixed_study, tmp_path: Path):
    study, _, _ = mixed_study
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot create the export folder"):
        export_study(study, blocker / "out", log=lambda _: None)


def test_cli_export(mixed_study, tmp_path: Path, capsys):
    from search.cli import main

    _, _, url = mixed_study
    assert main(["export", "--storage", url, "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "pareto.json").exists() and "front members" in capsys.readouterr().out


def test_load_model_rejects_bad_descriptions(tmp_path: Path):
    desc = tmp_path / "trial_1.json"
    desc.write_text(json.dumps({"family": "x", "knobs": {}}))
    with pytest.raises(ExportError, match=r"missing field\(s\) \['num_classes', 'image_size', 'weights'\]"):
        load_model(desc)
    desc.write_text(json.dumps({"family": "x", "knobs": {}, "num_classes": 10, "image_size": 32,
                                "weights": "trial_1.pt"}))
    with pytest.raises(FileNotFoundError, match="trial_1.pt"):
        load_model(desc)
    desc.write_text("{not json")
    with pytest.raises(ExportError, match="cannot read the model description"):
        load_model(desc)


# --- models=True on a real family -------------------------------------------------------------------

def _smallest_knobs(family) -> dict:
    """The low end of every knob range: a network that builds and runs in milliseconds."""
    import dataclasses

    space = family.search_space()

    def draw(name: str):
        d = space[name]
        return d.choices[0] if hasattr(d, "choices") else d.low

    return json.loads(json.dumps(dataclasses.asdict(family.sample(draw))))


def _trained_deploy(family, knobs: dict, image_size: int):
    from space.convert import has_schedule, set_progress, to_deploy

    torch.manual_seed(0)
    model = family.build(family.knobs_from_dict(knobs), num_classes=DATA["num_classes"],
                         image_size=image_size, in_channels=3)
    if has_schedule(model):
        set_progress(model, 1.0)
    deployed = to_deploy(model)
    with torch.no_grad():  # stand-in for training: non-default values everywhere, BN stats too
        for name, t in deployed.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.normal_(0.0, 0.2)
    return deployed.eval()


def _save_deploy(deployed, folder: Path) -> Path:
    """``folder/checkpoint.pt`` as a record names it, with the deploy weights next to it."""
    folder.mkdir(parents=True)
    torch.save(deployed.state_dict(), folder / "deploy.pt")
    return folder / "checkpoint.pt"


def _assert_onnx_matches(onnx_path: Path, deployed, size: int) -> None:
    """The ONNX file runs in onnx.reference (batch of 2: the batch axis is dynamic) and computes the
    deploy form's logits."""
    graph = onnx.load(onnx_path)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    got = ReferenceEvaluator(graph).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = deployed(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family_name", list_families())
def test_models_reload_with_load_model(family_name: str, tmp_path: Path):
    family = get_family(family_name)
    knobs = _smallest_knobs(family)
    size = 16
    deployed = _trained_deploy(family, knobs, size)
    checkpoint = _save_deploy(deployed, tmp_path / "checkpoints" / "abc")

    study = _new_study(tmp_path)
    data = {**DATA, "image_size": size}
    _add(study, "trained", [0.8, 2e6, 2e4], family=family.name, knobs=knobs, **data,
         checkpoint=str(checkpoint))
    _add(study, "trained", [0.6, 1e6, 1e4], family=family.name, knobs=knobs, **data,
         checkpoint=str(tmp_path / "checkpoints" / "gone" / "checkpoint.pt"))
    stale = tmp_path / "out" / "models" / "trial_1.pt"  # left by an earlier export
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    lines: list[str] = []
    images = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(2))
    doc = export_study(study, tmp_path / "out", models=True, log=lines.append, check_images=images)
    by_trial = {m["trial"]: m for m in doc["members"]}
    assert set(by_trial) == {0, 1}

    missing = by_trial[1]
    assert missing["weights"] is None and "deploy weights not found" in missing["weights_error"]
    assert any(line.startswith("trial 1: no model exported") for line in lines)
    assert not stale.exists()

    member = by_trial[0]
    assert member["weights"] == "models/trial_0.pt" and member["model"] == "models/trial_0.json"
    desc = json.loads((tmp_path / "out" / member["model"]).read_text())
    assert desc["family"] == family.name and desc["knobs"] == knobs
    assert (desc["num_classes"], desc["in_channels"], desc["image_size"]) == (10, 3, size)
    assert desc["mean"] == DATA["mean"] and desc["weights"] == "trial_0.pt"
    state = torch.load(tmp_path / "out" / member["weights"], weights_only=True)
    assert state.keys() == deployed.state_dict().keys()

    model = load_model(tmp_path / "out" / member["model"])
    assert not model.training
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), deployed(x))

    assert member["onnx"] == "models/trial_0.onnx", member.get("onnx_error")
    assert member["onnx_check"].startswith("same outputs (onnxruntime"), member["onnx_check"]
    assert member["onnx_form"] == "lowered" and member["onnx_checked_on"] == "validation images"
    assert member["onnx_max_abs_diff"] < 1e-4 and member["onnx_latency_ms"] > 0
    assert member["onnx_latency_setup"]["runtime"] == "onnxruntime" and member["onnx_latency_setup"]["batch"] == 1
    assert not any("ONNX export skipped" in line for line in lines)
    _assert_onnx_matches(tmp_path / "out" / member["onnx"], deployed, size)
    row = next(r for r in csv.DictReader(io.StringIO((tmp_path / "out" / "pareto.csv").read_text())) if r["trial"] == "0")
    assert float(row["onnx_latency_ms"]) == pytest.approx(member["onnx_latency_ms"])


def test_models_asked_for_and_none_written_is_an_error(tmp_path: Path, capsys):
    """Every front member's weights are missing (trained where this machine cannot see): the
    tables are written, the command says why no model was, and exits 1."""
    family = get_family("igcv2")
    knobs = _smallest_knobs(family)
    study = _new_study(tmp_path)
    _add(study, "trained", [0.8, 2e6, 2e4], family="igcv2", knobs=knobs, **{**DATA, "image_size": 16},
         checkpoint=str(tmp_path / "elsewhere" / "checkpoint.pt"))
    with pytest.raises(ExportError, match=r"--models wrote no model: none of the 1 front members' deploy weights"
                                          r".*trial 0: deploy weights not found at .*elsewhere/deploy.pt"):
        export_study(study, tmp_path / "out", models=True, log=lambda _: None)
    assert (tmp_path / "out" / "pareto.json").is_file() and not list((tmp_path / "out" / "models").iterdir())


def test_condensenetv2_with_sfr_exports_to_onnx(tmp_path: Path):
    """SFR's deploy form sums several kept outputs into one input channel; the ONNX graph must add
    them too (a plain index_add/scatter export overwrites, and the logits change)."""
    family = get_family("condensenet")
    # G = 4 SFR groups each keep O / S = O / 2 outputs: 2 * O entries into O channels, so the index
    # repeats channels (pigeonhole), whatever outputs the schedule keeps.
    knobs = {**_smallest_knobs(family), "sfr": True, "sfr_groups": 4, "sfr_factor": 2,
             "layers": [2, 1, 1], "growth": [8, 8, 8]}
    size = 8
    deployed = _trained_deploy(family, knobs, size)
    sfr_layers = [m for m in deployed.modules() if isinstance(m, CondensedReactivation)]
    assert len(sfr_layers) == sum(knobs["layers"])  # one SFR per dense layer
    for layer in sfr_layers:
        index = layer.index
        assert index.numel() == 4 * (layer.out_channels // 2)
        assert index.unique().numel() < index.numel(), f"no repeated SFR index: {index.tolist()}"
    layer = sfr_layers[0]
    y = torch.randn(1, layer.index.numel(), 2, 2)
    expanded = layer.index.view(1, -1, 1, 1).expand_as(y)
    zeros = y.new_zeros(1, layer.out_channels, 2, 2)
    assert not torch.allclose(zeros.clone().scatter_(1, expanded, y), zeros.clone().scatter_add_(1, expanded, y))

    checkpoint = _save_deploy(deployed, tmp_path / "checkpoints" / "sfr")
    study = _new_study(tmp_path)
    _add(study, "trained", [0.8, 2e6, 2e4], family="condensenet", knobs=knobs,
         **{**DATA, "image_size": size}, checkpoint=str(checkpoint))
    lines: list[str] = []
    doc = export_study(study, tmp_path / "out", models=True, log=lines.append)
    (member,) = doc["members"]
    assert member["onnx"] == "models/trial_0.onnx", member.get("onnx_error")
    assert member["onnx_check"].startswith("same outputs"), member["onnx_check"]

    model = load_model(tmp_path / "out" / member["model"])
    reloaded = [m for m in model.modules() if isinstance(m, CondensedReactivation)]
    assert [m.index.tolist() for m in reloaded] == [m.index.tolist() for m in sfr_layers]
    _assert_onnx_matches(tmp_path / "out" / member["onnx"], deployed, size)


class _RepeatedIndexAdd(torch.nn.Module):
    """Sums two conv outputs into one channel: the exporter turns this into an overwriting scatter."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.register_buffer("index", torch.tensor([0, 0, 1]))

    def forward(self, x):
        y = self.conv(x)
        return y.new_zeros(y.shape[0], 2, *y.shape[2:]).index_add_(1, self.index, y).mean((2, 3))


def test_mistranslated_onnx_is_refused_not_written(tmp_path: Path):
    from search.export._models import _export_onnx

    entry = {"trial": 3, "macs": 9}
    _export_onnx(entry, _RepeatedIndexAdd().eval(), {"image_size": 4, "in_channels": 3}, tmp_path, "trial_3")
    assert entry["onnx"] is None and "computes other outputs" in entry["onnx_error"]
    assert list(tmp_path.iterdir()) == []

    entry = {"trial": 4, "macs": 9}
    _export_onnx(entry, torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten()).eval(),
                 {"image_size": 1, "in_channels": 3}, tmp_path, "trial_4")
    assert entry["onnx"] == "models/trial_4.onnx" and entry["onnx_check"].startswith("same outputs")
    assert (tmp_path / "trial_4.onnx").stat().st_size > 0


def test_proxy_scores_get_a_csv_column_each(tmp_path: Path):
    study = _new_study(tmp_path)
    _add(study, "trained", [0.8, 2e6, 2e4], proxies={"synflow": 1.5e30, "naswot": 410.25})
    _add(study, "trained", [0.9, 3e6, 3e4], proxies={"synflow": None, "naswot": 399.5})
    _add(study, "trained", [0.7, 1e6, 1e4])  # recorded before proxies were switched on
    doc = export_study(study, tmp_path / "out", log=lambda _: None)
    assert {m["trial"]: m["proxies"] for m in doc["members"]} == {
        0: {"synflow": 1.5e30, "naswot": 410.25}, 1: {"synflow": None, "naswot": 399.5}, 2: {}}
    with open(tmp_path / "out" / "pareto.csv", newline="") as f:
        rows = {int(r["trial"]): r for r in csv.DictReader(f)}
    assert [k for k in rows[0] if k.startswith("proxy_")] == ["proxy_synflow", "proxy_naswot"]
    assert float(rows[0]["proxy_synflow"]) == 1.5e30 and rows[1]["proxy_synflow"] == ""
    assert rows[2]["proxy_naswot"] == ""


def test_exported_model_carries_its_input_contract_and_evaluates_on_the_study_data(tmp_path: Path, capsys):
    import numpy as np
    import yaml

    from search.cli import main
    from search.export import load_exported
    from trainers.train import evaluate

    family = get_family("rsnet")
    knobs = _smallest_knobs(family)
    size = 16
    deployed = _trained_deploy(family, knobs, size)
    study = _new_study(tmp_path)
    _add(study, "trained", [0.8, 2e6, 2e4], family="rsnet", knobs=knobs, **{**DATA, "image_size": size},
         checkpoint=str(_save_deploy(deployed, tmp_path / "checkpoints" / "abc")))
    doc = export_study(study, tmp_path / "out", models=True, log=lambda _: None)
    model_json = tmp_path / "out" / doc["members"][0]["model"]

    exported = load_exported(model_json)
    assert (exported.in_channels, exported.image_size, exported.mean) == (3, size, tuple(DATA["mean"]))
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (5, 3, size, size), dtype=np.uint8)
    x = exported.prepare(nchw)
    want = (torch.from_numpy(nchw).float() / 255 - torch.tensor(DATA["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(DATA["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, want)
    assert torch.equal(exported.prepare(nchw.transpose(0, 2, 3, 1)), x)  # NHWC too
    assert exported.prepare(rng.integers(0, 256, (2, 40, 40, 1), dtype=np.uint8)).shape == (2, 3, size, size)
    assert exported.prepare(rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)).shape == (4, 3, size, size)  # N x H x W grey
    with pytest.raises(ValueError, match="uint8"):
        exported.prepare(nchw.astype(np.float32))

    # `evaluate` on a study's data: the same accuracy as the trainer's evaluation with the model's statistics.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, n in (("train", 80), ("test", 40)):
        np.savez(data_dir / f"{split}.npz", images=rng.integers(0, 255, (n, 24, 24, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({"study": "ev", "data": {"dataset": "npz", "root": "data", "val_size": 20,
                                                                  "image_size": size},
                                          "families": {"rsnet": {}}}))
    assert main(["evaluate", str(model_json), str(study_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from search.config import load_study
    from search.sweep import load_study_data

    data = load_study_data(load_study(study_file))
    acc, _ = evaluate(exported.model, data.test_x, data.test_y, 64, "cpu", DATA["mean"], DATA["std"])
    assert out["images"] == 40 and out["accuracy"] == pytest.approx(acc)

    # export --models with the study file checks the ONNX graphs on the study's validation images.
    from search.cli import _check_images

    images = _check_images(str(study_file))
    assert images.shape == (20, 3, size, size) and images.dtype == torch.float32
    want_first = (data.val_x[:1].float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(images[:1], want_first)
    doc = export_study(study, tmp_path / "out2", models=True, log=lambda _: None, check_images=images)
    assert doc["members"][0]["onnx_checked_on"] == "validation images"
    assert doc["members"][0]["onnx_max_abs_diff"] < 1e-4

    (data_dir / "train.npz").unlink()
    assert _check_images(str(study_file)) is None  # no data here: random inputs, said on one line
    assert "ONNX graphs are checked on random inputs" in capsys.readouterr().out
    assert main(["evaluate", str(model_json), str(study_file)]) == 1
    assert "train.npz" in capsys.readouterr().err
