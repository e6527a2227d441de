"""The exported ``pareto.html`` in a real headless browser (Chromium, driven by Playwright).

It must load offline (every request other than the file itself is refused), log no console error,
and draw one point per front member and per trained trial, with each member's family and costs in
its hover text. Needs a Chromium binary (Debian's ``chromium`` package; ``.ci/run`` installs it):
without one the test skips and says why. Playwright (the test extra) drives it.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from playwright import sync_api as playwright

from search.export import export_study
from search.testing import bulk_add_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
_DIST = {"family": CategoricalDistribution(["igcv2", "rsnet"])}


def _chromium() -> str:
    for name in (os.environ.get("EFFNAS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium binary (apt-get install chromium, or set EFFNAS_CHROMIUM): the page is not "
                "checked in a browser")


def _study(folder: Path, n: int) -> optuna.Study:
    study = optuna.create_study(study_name="page", storage=f"sqlite:///{folder / 'study.db'}",
                                directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "macs", "params"])
    rng = random.Random(3)
    trials = []
    for i in range(n):
        family = "igcv2" if i % 3 else "rsnet"
        acc, macs, params = round(rng.uniform(0.3, 0.9), 3), rng.randrange(10**5, 10**8), rng.randrange(10**3, 10**6)
        rec = {"family": family, "knobs": {"width": i}, "val_acc": acc, "macs": macs, "params": params,
               "fidelity": {"epochs": 1}, "epochs": 1, "num_classes": 10, "image_size": 16}
        trials.append(create_trial(values=[acc, float(macs), float(params)], params={"family": family},
                                   distributions=_DIST, user_attrs={"status": "trained", "family": family,
                                                                    "record": rec}))
    bulk_add_trials(f"sqlite:///{folder / 'study.db'}", "page", trials)  # add_trials: 15 ms a trial
    return study


# Traces as the page holds them, read back from plotly's own graph div.
_TRACES_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  return gd.data.map(t => ({type: t.type, name: t.name, n: t.x.length, text: t.text, xaxis: t.xaxis}));
}"""


@pytest.mark.parametrize("n", [40, 2500])  # SVG points; WebGL (scattergl) for the grey ones from 2,000 on
def test_pareto_page_loads_offline_and_shows_every_point(tmp_path, n):
    binary = _chromium()
    study = _study(tmp_path, n)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    doc = export_study(study, tmp_path / "out", log=lambda _: None, storage_url=url)
    page_file = (tmp_path / "out" / "pareto.html").resolve()
    errors, foreign = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox", "--use-angle=swiftshader",
                                                                  "--enable-unsafe-swiftshader"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def route(r):
            if r.request.url.startswith("file://"):
                r.continue_()
            else:  # offline: nothing may come from a network
                foreign.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(page_file.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        traces = page.evaluate(_TRACES_JS)
        svg_points = page.evaluate("() => document.querySelectorAll('.scatterlayer .point').length")
        browser.close()
    assert not errors, errors
    assert not foreign, foreign
    members = {m["trial"]: m for m in doc["members"]}
    first_axis = [t for t in traces if t["xaxis"] == "x"]  # drawn again against params (x2)
    curve = [t for t in traces if t["xaxis"] == "x3"]
    assert len(curve) == 1 and curve[0]["n"] == len(doc["hypervolume_over_time"]["seconds"])
    assert sum(t["n"] for t in first_axis) == n  # one point per trained trial (front members included)
    assert sum(t["n"] for t in first_axis if t["name"].startswith("front")) == len(members)
    for t in first_axis:
        if t["name"].startswith("front"):
            for text in t["text"]:
                trial = int(text.split()[1])
                m = members[trial]
                assert f"({m['family']})" in text and f"MACs {m['macs']:,}" in text and f"params {m['params']:,}" in text
    grey = next(t for t in first_axis if t["name"] == "trained")
    assert grey["type"] == ("scattergl" if grey["n"] >= 2000 else "scatter")
    assert n < 2000 or grey["type"] == "scattergl"
    if n < 2000:  # SVG: every marker of both panels is in the DOM
        assert svg_points == 2 * n + curve[0]["n"]  # both panels, and the hypervolume curve's markers
