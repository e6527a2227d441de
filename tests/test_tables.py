"""Recorded tables (search/tables.py): a written table reads back equal, lookups hit and miss, and
each malformed table is one TableError naming the file and the problem."""
from __future__ import annotations

import copy
import gzip
import json
import os
from pathlib import Path

import pytest

from search.exceptions import EffnasError, TableError
from search.tables import FORMAT, Table, TableEntry, load_table, write_table

ENTRIES = (
    TableEntry(family="fam", knobs={"depth": [1, 2], "width": 8}, params=1000, macs=20000,
               runs=((0.5, 0.75), (0.25, 0.5)), epoch_seconds=(1.5, 2.5)),
    TableEntry(family="fam", knobs={"depth": [2, 2], "width": 8}, params=2000, macs=40000,
               runs=((0.6, 0.8),), epoch_seconds=(3.0, 3.0)),
    TableEntry(family="other", knobs={"depth": [1, 2], "width": 8}, params=10, macs=20,
               runs=((0.1, 0.2),), epoch_seconds=(0.5, 0.5)),
)
RAW = {
    "format": FORMAT, "name": "tiny", "provenance": {"source": "made up for the tests"}, "epochs": 2,
    "architectures": [{"family": "fam", "knobs": {"width": 8, "depth": [1, 2]}, "params": 1000, "macs": 20000,
                       "val_acc": [[0.5, 0.75], [0.25, 0.5]], "epoch_seconds": [1.5, 2.5]},
                      {"family": "fam", "knobs": {"width": 8, "depth": [2, 2]}, "params": 2000, "macs": 40000,
                       "val_acc": [[0.6, 0.8]], "epoch_seconds": [3, 3]}],
}


def _write(tmp_path: Path, raw, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


@pytest.mark.parametrize("name", ["t.json", "t.json.gz"])
def test_round_trip(tmp_path, name):
    path = write_table(tmp_path / name, name="tiny", epochs=2, provenance={"source": "tests"}, entries=ENTRIES)
    table = load_table(path)
    assert isinstance(table, Table)
    assert (table.name, table.epochs, table.provenance, table.path) == ("tiny", 2, {"source": "tests"},
                                                                          str(path.resolve()))
    assert table.entries == ENTRIES
    assert len(table) == 3 and table.families() == {"fam", "other"}
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    again = write_table(tmp_path / ("again-" + name), name="tiny", epochs=2, provenance={"source": "tests"},
                        entries=ENTRIES)
    assert again.read_bytes() == path.read_bytes()  # the same contents give the same bytes


def test_entry_seconds_and_mean_curve():
    entry = ENTRIES[0]
    assert entry.seconds == 4.0
    assert entry.mean_curve() == (0.375, 0.625)


def test_lookup_hit_and_miss(tmp_path):
    table = load_table(_write(tmp_path, RAW))
    hit = table.lookup("fam", {"depth": (2, 2), "width": 8})  # key order and tuples do not matter
    assert hit is not None and hit.params == 2000 and hit.epoch_seconds == (3.0, 3.0)
    assert isinstance(hit.epoch_seconds[0], float)  # integers in the file are read as floats
    assert table.lookup("fam", {"width": 8, "depth": [1, 2]}).macs == 20000
    assert table.lookup("fam", {"depth": [3, 2], "width": 8}) is None
    assert table.lookup("other", {"depth": [2, 2], "width": 8}) is None
    assert table.lookup("fam", {"depth": [2, 2]}) is None


def test_lookup_takes_a_knobs_dataclass(tmp_path):
    from space.registry import get_family, knobs_json

    knobs = get_family("slimconv").default_knobs()

    raw = copy.deepcopy(RAW)
    raw["architectures"][0].update(family="slimconv", knobs=knobs_json(knobs))
    table = load_table(_write(tmp_path, raw))
    assert table.lookup("slimconv", knobs).params == 1000


def test_loading_is_cached_until_the_file_changes(tmp_path):
    path = _write(tmp_path, RAW)
    first = load_table(path)
    assert load_table(str(path)) is first
    raw = copy.deepcopy(RAW)
    raw["name"] = "changed"
    path.write_text(json.dumps(raw))
    os.utime(path, ns=(first_ns := path.stat().st_mtime_ns + 10**9, first_ns))
    assert load_table(path).name == "changed"


def _arch(i: int = 0, **changes):
    raw = copy.deepcopy(RAW)
    raw["architectures"][i].update(changes)
    return raw


def _without(key: str, arch: int | None = None):
    raw = copy.deepcopy(RAW)
    del (raw["architectures"][arch] if arch is not None else raw)[key]
    return raw


ARCH0 = 'architectures[0] (fam {"depth":[1,2],"width":8})'
ARCH1 = 'architectures[1] (fam {"depth":[2,2],"width":8})'
BAD = [
    ("not-json", "{not json", "not a JSON file (line 1, column 2"),
    ("a-list", [1, 2], "must be a JSON object"),
    ("no-format", _without("format"), "no 'format' key; this effnas reads 'effnas-table/1' tables"),
    ("wrong-format", {**RAW, "format": "effnas-table/2"}, "format 'effnas-table/2'; this effnas reads 'effnas-table/1'"),
    ("missing-top-key", _without("epochs"), "missing key 'epochs'; a table has the keys"),
    ("unknown-top-key", {**RAW, "note": 1}, "unknown key 'note'; a table has only the keys"),
    ("epochs-zero", {**RAW, "epochs": 0}, "epochs must be a positive integer"),
    ("epochs-float", {**RAW, "epochs": 2.0}, "epochs must be a positive integer"),
    ("provenance-list", {**RAW, "provenance": ["x"]}, "provenance must be a mapping"),
    ("no-architectures", {**RAW, "architectures": []}, "architectures must be a non-empty list"),
    ("arch-not-mapping", {**RAW, "architectures": [[1]]}, "architectures[0]: must be a mapping"),
    ("missing-arch-key", _without("macs", 1), f"{ARCH1}: missing key 'macs'; an architecture has the keys"),
    ("unknown-arch-key", _arch(0, test_acc=[1]), f"{ARCH0}: unknown key 'test_acc'"),
    ("family-empty", _arch(0, family=""), "architectures[0]: family must be a family name"),
    ("knobs-list", _arch(0, knobs=[1, 2]), "architectures[0]: knobs must be a mapping"),
    ("params-float", _arch(0, params=1000.0), f"{ARCH0}: params must be a non-negative integer"),
    ("macs-negative", _arch(1, macs=-1), f"{ARCH1}: macs must be a non-negative integer"),
    ("params-bool", _arch(0, params=True), "params must be a non-negative integer"),
    ("val-acc-flat", _arch(0, val_acc=[0.5, 0.7]), f"{ARCH0}: val_acc must be a non-empty list of runs"),
    ("val-acc-empty", _arch(0, val_acc=[]), "val_acc must be a non-empty list of runs"),
    ("run-too-short", _arch(1, val_acc=[[0.6, 0.8], [0.7]]),
     f"{ARCH1}: val_acc run 1 has 1 epochs, but the table's epochs is 2"),
    ("run-too-long", _arch(0, val_acc=[[0.5, 0.6, 0.7]]), "val_acc run 0 has 3 epochs, but the table's epochs is 2"),
    ("percent", _arch(0, val_acc=[[50.0, 75.0]]), f"{ARCH0}: val_acc run 0 epoch 1 is 50.0; accuracies are fractions"),
    ("negative-acc", _arch(1, val_acc=[[0.6, -0.1]]), "val_acc run 0 epoch 2 is -0.1"),
    ("acc-string", _arch(0, val_acc=[["0.5", 0.7]]), "val_acc run 0 epoch 1 is '0.5'"),
    ("seconds-zero", _arch(0, epoch_seconds=[1.0, 0]), f"{ARCH0}: epoch_seconds epoch 2 is 0; every epoch takes a positive"),
    ("seconds-negative", _arch(0, epoch_seconds=[-1.0, 1.0]), "epoch_seconds epoch 1 is -1.0"),
    ("seconds-length", _arch(1, epoch_seconds=[3.0]), f"{ARCH1}: epoch_seconds must be a list of 2 seconds (one per epoch), got 1 values"),
    ("duplicate", _arch(1, knobs={"depth": [1, 2], "width": 8}),
     'architectures[1] (fam {"depth":[1,2],"width":8}) repeats architectures[0]; each family and knobs may appear once'),
]


@pytest.mark.parametrize("raw,message", [(raw, msg) for _, raw, msg in BAD], ids=[b[0] for b in BAD])
def test_malformed_table_is_one_clear_error(tmp_path, raw, message):
    path = _write(tmp_path, raw)
    with pytest.raises(TableError) as info:
        load_table(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text
    assert isinstance(info.value, EffnasError)  # the CLI prints it as one line, exit status 1


def test_nan_and_infinity_are_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_arch(0, val_acc=[[float("nan"), 0.5]])))
    with pytest.raises(TableError, match="val_acc run 0 epoch 1 is nan"):
        load_table(path)
    path.write_text(json.dumps(_arch(0, epoch_seconds=[float("inf"), 1.0])))
    with pytest.raises(TableError, match="epoch_seconds epoch 1 is inf"):
        load_table(path)


def test_missing_file_and_broken_gzip(tmp_path):
    with pytest.raises(TableError, match=r"nope\.json\.gz: no such table file"):
        load_table(tmp_path / "nope.json.gz")
    broken = tmp_path / "t.json.gz"
    broken.write_bytes(gzip.compress(json.dumps(RAW).encode())[:40])
    with pytest.raises(TableError, match=r"t\.json\.gz: not a valid gzip file"):
        load_table(broken)
    binary = tmp_path / "t.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TableError, match=r"t\.bin: not a JSON file"):
        load_table(binary)


def test_write_refuses_what_a_reader_would_refuse(tmp_path):
    bad = TableEntry(family="fam", knobs={}, params=1, macs=1, runs=((93.0, 94.0),), epoch_seconds=(1.0, 1.0))
    with pytest.raises(TableError, match="accuracies are fractions"):
        write_table(tmp_path / "t.json", name="x", epochs=2, provenance={}, entries=[bad])
    assert not (tmp_path / "t.json").exists()


def _sparse() -> Table:
    entries = (
        TableEntry("fam", {"depth": [1, 1], "width": 8, "act": "relu"}, 10, 100, ((0.1,),), (1.0,)),
        TableEntry("fam", {"depth": [4, 4], "width": 8, "act": "relu"}, 40, 400, ((0.4,),), (1.0,)),
        TableEntry("fam", {"depth": [1, 1], "width": 32, "act": "gelu"}, 20, 200, ((0.2,),), (1.0,)),
        TableEntry("fam", {"depth": [2, 2], "width": 16, "act": "relu"}, 30, 300, ((0.3,),), (1.0,)),
        TableEntry("other", {"depth": [1, 1, 1], "width": 8, "act": "relu"}, 1, 1, ((0.9,),), (1.0,)),
    )
    return Table(name="sparse", epochs=1, provenance={}, entries=entries, path="<memory>")


def test_nearest_is_the_entry_itself_when_recorded():
    table = _sparse()
    for e in table.entries:
        assert table.nearest(e.family, e.knobs) is e


def test_nearest_scales_numbers_by_their_range_and_counts_other_mismatches():
    table = _sparse()
    fam = [e for e in table.entries if e.family == "fam"]
    # depth [2, 1]: |2-1|/3 = 0.33 from entry 0; width 8 matches; nearest is entry 0
    assert table.nearest("fam", {"depth": [2, 1], "width": 8, "act": "relu"}) is fam[0]
    # depth [3, 3] is 2 x 1/3 from [4, 4] and 2 x 1/3 from [2, 2], but width 8 (entry 1) beats 16
    # (entry 3: 8/24 of the width range away)
    assert table.nearest("fam", {"depth": [3, 3], "width": 8, "act": "relu"}) is fam[1]
    # a categorical mismatch costs 1: width 30 and gelu are nearest the gelu entry
    assert table.nearest("fam", {"depth": [1, 1], "width": 30, "act": "gelu"}) is fam[2]
    assert table.nearest("fam", {"depth": [1, 1], "width": 30, "act": "relu"}) is fam[0]
    # a value outside the recorded choices (a new activation) is a mismatch with every entry
    assert table.nearest("fam", {"depth": [4, 4], "width": 8, "act": "silu"}) is fam[1]


def test_nearest_ties_go_to_the_entry_listed_first_and_families_stay_apart():
    table = _sparse()
    fam = [e for e in table.entries if e.family == "fam"]
    # halfway between depth [1, 1] and [4, 4] at width 8: equal distances, the first listed wins
    assert table.nearest("fam", {"depth": [1, 4], "width": 8, "act": "relu"}) is fam[0]
    assert table.nearest("other", {"depth": [4, 4, 4], "width": 32, "act": "gelu"}).family == "other"
    assert table.nearest("absent", {"depth": [1, 1]}) is None


def test_knob_codes_flatten_and_rebuild_a_family_s_knobs():
    table = _sparse()
    codes = table.knob_codes("fam")
    names = [name for name, _ in codes.params]
    assert names == ["fam.act", "fam.depth.0", "fam.depth.1", "fam.width"]
    assert dict(codes.params)["fam.width"] == [8, 16, 32]
    for e in table.entries[:4]:
        assert codes.knobs(codes.flat(e.knobs)) == e.knobs


def test_the_shipped_curves_table_holds_the_cost_model_s_params_and_macs():
    """effnas's own families as a table (bench/data/cifar10_curves_table.json.gz): every recorded
    architecture is one the families accept today, priced exactly as the simulated backend prices it."""
    from space.cost import measure
    from space.registry import get_family

    table = load_table(Path(__file__).resolve().parents[1] / "bench" / "data" / "cifar10_curves_table.json.gz")
    assert len(table) >= 200 and table.families() == {"condensenet", "igcv2", "rsnet", "slimconv"}
    data = table.provenance["data"]
    for e in table.entries:
        cost = measure(e.family, get_family(e.family).knobs_from_dict(e.knobs), num_classes=data["num_classes"],
                       image_size=data["image_size"], in_channels=data["in_channels"])
        assert (cost.params, cost.macs) == (e.params, e.macs), (e.family, e.knobs)
