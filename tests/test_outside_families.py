"""Families from outside space/: a study's ``family_modules:`` (files and module names) and installed
``effnas.families`` entry points register through the same registry; each bad entry is one error."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from search.config import load_study, parse_study
from search.exceptions import StudyFileError

REPO = Path(__file__).resolve().parents[1]

TINY = '''
from dataclasses import dataclass

from torch import nn

from space.knobs import int_range, require
from space.registry import Family, register_family


@dataclass(frozen=True)
class TinyKnobs:
    width: int = 8

    def __post_init__(self):
        require(isinstance(self.width, int) and self.width >= 1,
                f"width must be a positive integer, but got width={{self.width!r}}")


def build(knobs, num_classes=10, image_size=32, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, knobs.width, 3, padding=1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(knobs.width, num_classes))


register_family(Family(name="{name}", knobs_cls=TinyKnobs, build=build,
                       search_space=lambda: {{"{name}.width": int_range(4, 16, step=4)}},
                       sample=lambda draw: TinyKnobs(width=draw("{name}.width")), summary="a tiny test family"))
'''


def tiny_source(name: str = "tiny") -> str:
    return TINY.format(name=name)


@pytest.fixture
def registry():
    """The registry as it was before the test: families and modules a test loads are forgotten."""
    from space import registry as reg

    reg.list_families()  # the built-in families first
    saved = (dict(reg._FAMILIES), dict(reg._PRESETS), dict(reg._LOADED_MODULES), dict(reg._ENTRY_POINT_ERRORS))
    flags = (reg._ENTRY_POINTS_LOADED, reg._ENTRY_POINT_FAMILIES)
    modules = set(sys.modules)
    yield reg
    for target, value in zip((reg._FAMILIES, reg._PRESETS, reg._LOADED_MODULES, reg._ENTRY_POINT_ERRORS), saved):
        target.clear()
        target.update(value)
    reg._ENTRY_POINTS_LOADED, reg._ENTRY_POINT_FAMILIES = flags
    for name in [m for m in sys.modules if m not in modules and m.startswith(("effnas_family_", "tiny_plugin"))]:
        del sys.modules[name]


def _study(tmp_path: Path, **changes) -> Path:
    raw = {"study": "outside", "data": {"dataset": "digits", "val_size": 100}, "budget": {"n_trials": 3},
           "fidelity": {"epochs": 1}, "family_modules": ["plugins/tiny.py"],
           "families": {"tiny": {"knobs": {"width": [4, 8]}}}, **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _plugin(tmp_path: Path, source: str, name: str = "plugins/tiny.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_a_family_from_a_file_serves_a_parsed_study(tmp_path, registry):
    import optuna

    from search.proposal import family_spaces, propose
    from space.cost import measure

    plugin = _plugin(tmp_path, tiny_source())
    cfg = load_study(_study(tmp_path, families={"tiny": {"knobs": {"width": [4, 8]}}, "rsnet": {}},
                            seeds=[{"family": "tiny", "knobs": {"width": 8}}]))
    assert cfg.family_modules == (str(plugin.resolve()),)  # what a worker loads again, from any folder
    assert set(cfg.families) == {"tiny", "rsnet"} and cfg.seeds[0].knobs_dict == {"width": 8}
    spaces = family_spaces(cfg)
    assert spaces["tiny"]["tiny.width"].high == 8
    trial = optuna.create_study().ask({"family": optuna.distributions.CategoricalDistribution(["tiny"])})
    proposal = propose(trial, {"tiny": spaces["tiny"]}, cfg.fidelity_key())
    assert proposal.family == "tiny" and proposal.knobs_dict["width"] in (4, 8)
    cost = measure("tiny", proposal.knobs, num_classes=10, image_size=8)
    width = proposal.knobs_dict["width"]
    assert cost.params == 27 * width + width * 10 + 10 and cost.macs == 27 * width * 64 + width * 10


def test_loading_is_idempotent(tmp_path, registry):
    plugin = _plugin(tmp_path, tiny_source())
    assert registry.load_family_modules(["plugins/tiny.py"], tmp_path) == ["tiny"]
    assert registry.load_family_modules([str(plugin), "plugins/tiny.py"], tmp_path) == ["tiny"]
    copy = _plugin(tmp_path, tiny_source(), "elsewhere/tiny.py")  # the same contents at another path
    assert registry.load_family_modules([str(copy)]) == ["tiny"]
    # Two studies reading the same file in one process: both parse.
    parse_study(yaml.safe_load(_study(tmp_path).read_text()), "a.yaml", base_dir=tmp_path)
    parse_study(yaml.safe_load(_study(tmp_path).read_text()), "b.yaml", base_dir=tmp_path)
    assert registry.list_families().count("tiny") == 1


def test_a_module_name_entry(tmp_path, registry, monkeypatch):
    _plugin(tmp_path, tiny_source("tiny_mod"), "tiny_plugin_mod.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse_study(yaml.safe_load(_study(tmp_path, family_modules=["tiny_plugin_mod"],
                                            families={"tiny_mod": {}}).read_text()), "s.yaml", base_dir=tmp_path)
    assert cfg.family_modules == ("tiny_plugin_mod",) and "tiny_mod" in registry.list_families()


def test_a_worker_process_loads_the_same_entries_under_the_same_module_name(tmp_path, registry):
    plugin = _plugin(tmp_path, tiny_source())
    cfg = load_study(_study(tmp_path))
    here = registry.get_family("tiny").knobs_cls.__module__
    code = ("import sys; from space.registry import get_family, load_family_modules; "
            "print(load_family_modules(sys.argv[1:]), get_family('tiny').knobs_cls.__module__)")
    proc = subprocess.run([sys.executable, "-c", code, *cfg.family_modules], capture_output=True, text=True,
                          cwd=REPO.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['tiny']", here] and here.startswith("effnas_family_tiny_")
    assert plugin.is_file()


def _error(tmp_path: Path, **changes) -> str:
    with pytest.raises(StudyFileError) as info:
        load_study(_study(tmp_path, **changes))
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'study.yaml'}: ") and "\n" not in text
    return text


def test_a_missing_file(tmp_path, registry):
    text = _error(tmp_path, family_modules=["plugins/absent.py"])
    assert (f"family_modules[0]: 'plugins/absent.py': no such file {tmp_path / 'plugins' / 'absent.py'}; "
            f"give the path of a Python file relative to {tmp_path} (the study file's folder)") in text


def test_a_module_that_fails_to_import(tmp_path, registry):
    _plugin(tmp_path, "import torch\nraise RuntimeError('the plugin is broken')\n")
    text = _error(tmp_path)
    assert "family_modules[0]: 'plugins/tiny.py': importing" in text
    assert "failed: RuntimeError: the plugin is broken; fix the module (--debug shows the traceback)" in text
    _plugin(tmp_path, "def oops(:\n")
    assert "failed: SyntaxError:" in _error(tmp_path)


def test_a_module_that_registers_nothing(tmp_path, registry):
    _plugin(tmp_path, "X = 1\n")
    text = _error(tmp_path)
    assert "family_modules[0]: 'plugins/tiny.py':" in text
    assert "registered no family; a family module must call space.registry.register_family(Family(...))" in text
    text = _error(tmp_path, family_modules=["json"])
    assert "family_modules[0]: 'json': module 'json' registered no family" in text


def test_a_module_that_is_not_installed(tmp_path, registry):
    text = _error(tmp_path, family_modules=["no_such_family_package.families"])
    assert ("family_modules[0]: 'no_such_family_package.families': no module named 'no_such_family_package' is "
            "importable here; install the package that provides it") in text


def test_a_module_that_lacks_a_dependency_is_an_import_error(tmp_path, registry):
    _plugin(tmp_path, "import no_such_dependency_xyz\n")
    assert "failed: ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in _error(tmp_path)


def test_entries_must_be_strings_in_a_list(tmp_path, registry):
    assert "family_modules: expected a list, got 'plugins/tiny.py'" in _error(tmp_path, family_modules="plugins/tiny.py")
    assert "family_modules[0]: 3 is not a file path or module name" in _error(tmp_path, family_modules=[3])


def test_a_family_name_taken_twice_is_refused_and_undone(tmp_path, registry):
    _plugin(tmp_path, tiny_source("half") + "\n" + tiny_source("rsnet"))
    text = _error(tmp_path)
    assert "failed: ValueError: family 'rsnet' is already registered" in text
    assert "half" not in registry.list_families()  # what the module registered before it failed is undone
    assert not [m for m in sys.modules if m.startswith("effnas_family_tiny_")]
    _plugin(tmp_path, tiny_source("half"))  # fixed: the same study now loads
    assert "half" in load_study(_study(tmp_path, families={"half": {}})).families


def test_a_family_not_named_in_family_modules(tmp_path, registry):
    _plugin(tmp_path, tiny_source())
    text = _error(tmp_path, families={"tinny": {}})
    assert "families.tinny: unknown family (did you mean 'tiny'?); valid families: " in text
    assert "a family of your own is named by family_modules:" in text


# --- entry points ------------------------------------------------------------------------------

def _install_plugin(tmp_path: Path, monkeypatch, value: str, module_source: str) -> None:
    """A package installed on sys.path that declares an ``effnas.families`` entry point."""
    site = tmp_path / "site"
    dist = site / "tiny_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[effnas.families]\ntiny = {value}\n")
    (site / "tiny_plugin.py").write_text(module_source)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys.modules["space.registry"], "_ENTRY_POINTS_LOADED", False)


def test_an_installed_entry_point_is_loaded_when_a_name_is_not_found(tmp_path, registry, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "tiny_plugin", tiny_source("plugged"))
    assert "plugged" not in registry.list_families()  # lazily: not before a name is missing
    assert registry.get_family("plugged").name == "plugged"
    cfg = parse_study({"study": "s", "data": {"dataset": "digits", "val_size": 100}, "families": {"plugged": {}}})
    assert set(cfg.families) == {"plugged"} and cfg.family_modules == ()


def test_an_entry_point_may_name_a_register_function(tmp_path, registry, monkeypatch):
    source = "def register():\n" + textwrap.indent(tiny_source("plugged_fn"), "    ")
    _install_plugin(tmp_path, monkeypatch, "tiny_plugin:register", source)
    assert registry.get_family("plugged_fn").summary == "a tiny test family"


def test_a_broken_entry_point_is_named_in_the_error(tmp_path, registry, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "tiny_plugin", "raise ImportError('needs libfoo')\n")
    with pytest.raises(KeyError, match=r"unknown family 'plugged'.*the installed family plugin tiny = tiny_plugin "
                                       r"failed to load \(ImportError: needs libfoo\): fix or uninstall it"):
        registry.get_family("plugged")
    assert registry.get_family("rsnet").name == "rsnet"  # the built-in families are unharmed
    with pytest.raises(StudyFileError, match=r"families.plugged: unknown family; .*plugin tiny = tiny_plugin failed"):
        parse_study({"study": "s", "data": {"dataset": "digits", "val_size": 100}, "families": {"plugged": {}}})
