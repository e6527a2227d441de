"""NAS-Bench-Macro, the first family from outside space/ (examples/nas_bench_macro/): the knobs, the
network, the effnas cost model against the benchmark's params and MACs for every key, and the shipped
table against the benchmark's own file (when ../shared holds it)."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search.config import parse_study
from search.tables import load_table

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EFFNAS_SHARED", REPO.parent / "shared"))  # as conftest.py finds it
EXAMPLE = REPO / "examples" / "nas_bench_macro"
FAMILY_FILE = EXAMPLE / "family.py"
TABLE = EXAMPLE / "table.json.gz"
SOURCE = SHARED / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"


def require_shared_source() -> Path:
    """The benchmark's own JSON, or skip (mandatory in CI: EFFNAS_REQUIRE_SHARED=1)."""
    if SOURCE.is_file():
        return SOURCE
    reason = (f"NAS-Bench-Macro's JSON not found at {SOURCE} (set EFFNAS_SHARED to the folder holding "
              f"data/nas-bench-macro)")
    if os.environ.get("EFFNAS_REQUIRE_SHARED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def family():
    """The family, loaded as a study loads it; forgotten again after this module's tests."""
    from space import registry as reg

    reg.list_families()
    saved, loaded, modules = dict(reg._FAMILIES), dict(reg._LOADED_MODULES), set(sys.modules)
    assert reg.load_family_modules([str(FAMILY_FILE)]) == ["nas_bench_macro"]
    yield reg.get_family("nas_bench_macro")
    reg._FAMILIES.clear()
    reg._FAMILIES.update(saved)
    reg._LOADED_MODULES.clear()
    reg._LOADED_MODULES.update(loaded)
    for name in [m for m in sys.modules if m not in modules and m.startswith("effnas_family_")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def module(family):
    return sys.modules[family.knobs_cls.__module__]


def _make_table_script():
    spec = importlib.util.spec_from_file_location("nas_bench_macro_make_table", EXAMPLE / "make_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def table():
    """The shipped table; or, were it missing, the one converted from ../shared; or skip."""
    if TABLE.is_file():
        start = time.perf_counter()
        loaded = load_table(TABLE)
        print(f"loaded {len(loaded)} entries in {time.perf_counter() - start:.3f} s")
        return loaded
    if not SOURCE.is_file():
        pytest.skip(f"neither the shipped table {TABLE} nor NAS-Bench-Macro's JSON {SOURCE} exists")
    return load_table(_make_table_script().make_table(SOURCE, Path(os.environ.get("TMPDIR", "/tmp")) / "nbm.json.gz"))


def test_knobs_validate_and_map_to_benchmark_keys(family, module):
    knobs = module.knobs_from_key("01201200")
    assert knobs.layer == (0, 1, 2, 0, 1, 2, 0, 0) and knobs.key == "01201200"
    assert family.knobs_from_dict({"layer": [2] * 8}) == module.NasBenchMacroKnobs(layer=2)
    assert family.knobs_with(knobs, {"layer.7": 2}).key == "01201202"
    for bad, message in [((0, 1, 2), "layer needs 8 values"), ((0,) * 7 + (3,), r"layer\[7\] must be 0 \(identity\)"),
                         ((True,) * 8, r"layer\[0\] must be 0"), ((1.0,) * 8, r"layer\[0\] must be 0")]:
        with pytest.raises(ValueError, match=message):
            module.NasBenchMacroKnobs(layer=bad)
    with pytest.raises(ValueError, match="a NAS-Bench-Macro key is 8 digits out of 0, 1, 2, but got '0120'"):
        module.knobs_from_key("0120")


def test_search_space_has_stable_names_and_spans_every_key(family):
    space = family.search_space()
    assert list(space) == [f"nas_bench_macro.layer.{i}" for i in range(8)]
    assert all(d.choices == (0, 1, 2) for d in space.values())
    from space.knobs import draw_random, space_size

    assert space_size(space) == 3 ** 8
    rng = random.Random(0)
    assert len({family.sample(draw_random(space, rng)).layer for _ in range(200)}) > 150


def test_the_network_trains_and_matches_an_independent_count(family, module):
    torch.manual_seed(0)
    knobs = module.knobs_from_key("21012012")  # every operation, at a stride and within a stage
    model = family.build(knobs, num_classes=7, image_size=16)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 7, (2,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and not [n for n, p in model.named_parameters() if p.grad is None]
    from space.cost import measure
    from space.convert import to_deploy

    cost = measure("nas_bench_macro", knobs, num_classes=10, image_size=32)
    model = to_deploy(family.build(knobs, num_classes=10, image_size=32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert cost.macs == cost.train_macs == counter.get_total_flops() // 2
    assert cost.params == cost.train_params == sum(p.numel() for p in model.parameters())


def test_the_benchmark_documented_count(family, module):
    from space.cost import measure

    cost = measure("nas_bench_macro", module.knobs_from_key("00000000"), num_classes=10, image_size=32)
    assert cost.params == 387_882  # PROVENANCE.md's check of the counting convention


def test_cost_model_gives_the_tables_params_and_macs_for_every_key(family, table):
    from space.cost import measure

    start, cpu = time.perf_counter(), time.process_time()
    wrong = []
    for entry in table.entries:
        cost = measure("nas_bench_macro", family.knobs_from_dict(entry.knobs), num_classes=10, image_size=32)
        if (cost.params, cost.macs) != (entry.params, entry.macs):
            wrong.append((entry.knobs, (cost.params, cost.macs), (entry.params, entry.macs)))
    print(f"{len(table)} architectures measured in {time.perf_counter() - start:.1f} s "
          f"({time.process_time() - cpu:.1f} s of CPU)")
    assert len(table) == 3 ** 8 and not wrong, wrong[:5]


def test_the_table_covers_the_space_and_sampled_knobs_find_their_entry(family, table):
    from space.knobs import draw_random
    from space.registry import knobs_json

    assert table.epochs == 1 and table.families() == {"nas_bench_macro"}
    assert {tuple(e.knobs["layer"]) for e in table.entries} == {k.layer for k in _all_knobs(family)}
    rng = random.Random(1)
    for _ in range(50):
        knobs = family.sample(draw_random(family.search_space(), rng))
        entry = table.lookup("nas_bench_macro", knobs_json(knobs))
        assert entry is not None and entry is table.lookup("nas_bench_macro", knobs)
        assert len(entry.runs) == 3 and all(0.4 < run[0] < 0.95 for run in entry.runs) and entry.seconds > 0
    provenance = table.provenance
    assert "a model, not a measurement" in provenance["epoch_seconds"]["kind"] and provenance["license"].startswith("Apache-2.0")


def _all_knobs(family):
    import itertools

    return [family.knobs_cls(layer=layer) for layer in itertools.product((0, 1, 2), repeat=8)]


def test_a_study_names_the_family_through_family_modules(family, tmp_path):
    raw = {"study": "nbm", "data": {"dataset": "digits", "val_size": 100},
           "family_modules": [os.path.relpath(FAMILY_FILE, tmp_path)],
           "families": {"nas_bench_macro": {"knobs": {"layer.0": [0, 1]}}}}
    cfg = parse_study(raw, str(tmp_path / "nbm.yaml"), base_dir=tmp_path)
    assert cfg.family_modules == (str(FAMILY_FILE),) and list(cfg.families) == ["nas_bench_macro"]


def test_the_shipped_table_is_what_the_source_converts_to(table):
    source_path = require_shared_source()
    script = _make_table_script()
    source, sha256 = script.read_source(source_path)
    assert sha256 == script.SOURCE_SHA256
    assert sha256 in (EXAMPLE / "PROVENANCE.md").read_text()
    assert table.provenance == json.loads(json.dumps(script.provenance(sha256)))
    assert table.entries == tuple(script.table_entries(source))
    assert (table.name, table.epochs) == (script.NAME, 1)
    assert len(source) == len(table) and all(
        [round(a / 100, 4) for a in source[key]["test_acc"]] == [run[0] for run in
                                                                 table.lookup("nas_bench_macro", {"layer": [int(c) for c in key]}).runs]
        for key in list(source)[:100])


def test_the_shipped_table_bytes_are_reproducible(tmp_path):
    source_path = require_shared_source()
    out = _make_table_script().make_table(source_path, tmp_path / "table.json.gz")
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(TABLE.read_bytes())
