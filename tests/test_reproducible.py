"""A trial's numbers depend on its architecture, data, recipe and seed, not on how busy the machine
was: the trainer's timed choices (memory format, condensed form) are recorded and replayed, a
resumed run keeps those its checkpoint holds, and a retry of a diverged run starts afresh from
another random state instead of diverging again the same way.

Real training of the trainer tests' tiny network on scikit-learn's digits (a second or two a run).
"""
from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time

import pytest

from test_trainer import NaNAfter, TinyNet
from trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainers.data import DataConfig, load_data
from trainers.train import NonFiniteLossError, TrainConfig, train_model

AUTOTUNED = TrainConfig(epochs=3, seed=1)  # both timed choices: memory format, then the condensed form


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig("digits", val_size=300, test_size=200))  # 17 batches of 64 per epoch


@contextlib.contextmanager
def _busy_cores(n: int = 2):
    """Other processes spinning on the cores while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.2)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _curve(result) -> list:
    """Everything per epoch that does not measure time, compared bit for bit."""
    return [(h["train_loss"], h["val_acc"], h["val_loss"], h["lr"], h["form"]) for h in result.history]


def test_the_timed_choices_are_recorded_and_a_rerun_replays_them_loaded_or_not(digits):
    with _busy_cores():
        loaded = train_model(TinyNet, digits, AUTOTUNED)
    assert set(loaded.choices) == {"memory_format", "condense"} and loaded.seed == 1
    assert loaded.choices["condense"] == ("masked" if loaded.condensed_at is None else loaded.memory_format)

    alone = train_model(TinyNet, digits, dataclasses.replace(AUTOTUNED, choices=loaded.choices))
    assert _curve(alone) == _curve(loaded) and alone.val_acc == loaded.val_acc
    assert alone.choices == loaded.choices and alone.condensed_at == loaded.condensed_at

    # A replayed choice is taken whatever the timings say (the other format rounds differently:
    # left to the timings, a rerun could take it and move the curve).
    swap = {"contiguous": "channels_last", "channels_last": "contiguous"}
    pinned = {**loaded.choices, "memory_format": swap[loaded.choices["memory_format"]]}
    other = train_model(TinyNet, digits, dataclasses.replace(AUTOTUNED, choices=pinned))
    assert other.choices == pinned and other.memory_format == (
        pinned["memory_format"] if pinned["condense"] == "masked" else pinned["condense"])


def test_a_resumed_run_keeps_the_choices_its_checkpoint_holds(digits, tmp_path):
    def crash(report) -> None:
        if report.epoch == 2:  # both choices made (the switch falls in epoch 2) and checkpointed
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        train_model(TinyNet, digits, AUTOTUNED, report=crash, checkpoint_dir=tmp_path)
    made = load_checkpoint(tmp_path / CHECKPOINT_NAME)["choices"]
    assert set(made) == {"memory_format", "condense"}
    with _busy_cores():
        resumed = train_model(TinyNet, digits, AUTOTUNED, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2 and resumed.choices == made
    replayed = train_model(TinyNet, digits, dataclasses.replace(AUTOTUNED, choices=made))
    assert _curve(resumed) == _curve(replayed)


def test_choices_a_run_cannot_take_are_refused():
    with pytest.raises(ValueError, match=r"choices.memory_format must be one of"):
        TrainConfig(choices={"memory_format": "nhwc"})
    with pytest.raises(ValueError, match=r"choices: unknown key 'format'"):
        TrainConfig(choices={"format": "contiguous"})
    with pytest.raises(ValueError, match=r"retry_seed_offset must be an integer >= 0"):
        TrainConfig(retry_seed_offset=-1)


def test_choices_outside_the_runs_settings_are_refused(digits):
    cfg = TrainConfig(epochs=1, channels_last=False, choices={"memory_format": "channels_last"})
    with pytest.raises(ValueError, match=r"choices.memory_format='channels_last' cannot be replayed"):
        train_model(TinyNet, digits, cfg)


def test_a_retry_of_a_diverged_run_starts_afresh_from_another_random_state(digits, tmp_path):
    cfg = TrainConfig(epochs=2, seed=1, autotune=False)
    with pytest.raises(NonFiniteLossError):
        train_model(lambda: NaNAfter(17 + 3), digits, cfg, checkpoint_dir=tmp_path)  # epoch 2, step 3
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1  # the diverged attempt's, left behind

    retry = train_model(TinyNet, digits, dataclasses.replace(cfg, retry_seed_offset=1), checkpoint_dir=tmp_path)
    assert retry.resumed_from_epoch is None and retry.epochs == 2 and retry.seed == 2
    same_state = train_model(TinyNet, digits, cfg)  # what starting over from the first attempt's state gives
    assert retry.history[0]["train_loss"] != same_state.history[0]["train_loss"]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["identity"]["recipe"]["retry_seed_offset"] == 1

    # The retry's own checkpoint is resumed by a retry of it after a crash (same offset) ...
    again = train_model(TinyNet, digits, dataclasses.replace(cfg, retry_seed_offset=1), checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == 2 and again.val_acc == retry.val_acc
    # ... and never taken over by an earlier attempt.
    with pytest.raises(ValueError, match=r"different run \(recipe.retry_seed_offset: saved 1, now None\)"):
        train_model(TinyNet, digits, cfg, checkpoint_dir=tmp_path)
