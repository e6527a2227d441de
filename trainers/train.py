"""Training one architecture: SGD with a per-iteration cosine schedule, the papers' CIFAR recipe.

Reads top to bottom (nanoGPT style): configuration, small helpers, run state, memory format and
condensation switch, one epoch, checkpoints, then :func:`train_model`, the loop that ties them
together.

Recipe (CondenseNet / CondenseNetV2 official code): SGD, momentum 0.9, nesterov, weight decay
1e-4, batch 64, learning rate 0.1 decayed by a cosine stepped every iteration, progress
``(epoch + batch / batches) / epochs`` fed to the mask schedule (:func:`space.convert.set_progress`)
before every batch. The last partial batch of an epoch is dropped (a random 16 of CIFAR's 45,000
training images per epoch at batch 64), which keeps BN away from batches of one image.

Condensed training: once progress >= 0.5, a ``set_progress`` call changes nothing and a probe on a
copy confirms that no later call can (:func:`trainers.condense.masks_final`), the masked network
is converted to its deploy form, checked equal on a validation batch, and training continues on
the condensed network with a new optimizer whose momentum is carried over element by element, and
with the copies the conversion made of one parameter kept tied (:mod:`trainers.condense`). Both
forms compute the same function and take the same SGD steps, so this changes the cost of the
second half of training, not its result (up to float rounding).

Autotuning (``autotune``, :mod:`trainers.tune`): the first training steps alternate between NCHW
and channels-last and training continues in the faster; at the switch the masked form is timed
against the condensed form (in both layouts) and training switches only if that is faster.
Neither choice changes what is computed, only how fast, but each changes the float rounding of
every later step, and a timing depends on how busy the machine is. So the choices made are
recorded (``TrainResult.choices``, and in every checkpoint, so a resumed run keeps them) and a
rerun given them (``TrainConfig.choices``) replays them without timing: the same architecture,
data, recipe, seed and choices give the same curve, bit for bit, on a loaded machine or an idle one.
Without ``autotune``: channels-last on CUDA only, and the switch as soon as the masks are final.

Retrying a diverged run (``retry_seed_offset``): the ``n``-th retry after a non-finite loss trains
from seed ``seed + n`` (model init, data order, augmentation), from scratch: a checkpoint that an
earlier attempt (a smaller offset) left is not resumed, it would diverge again the same way.

After the last epoch the network is converted to its deploy form, checked equal to the training
form, and the final metrics are measured on the deploy form.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from space.convert import has_schedule, set_progress, to_deploy
from trainers.augment import Augmenter, normalize
from trainers.checkpoint import CHECKPOINT_NAME, DEPLOY_NAME, capture_rng, load_checkpoint, restore_rng, save_atomic
from trainers.condense import (carry_momentum, check_deploy, element_sources, find_ties, masks_final,
                               tie_gradients)
from trainers.data import DataSplits
from trainers.latency import measure_latency
from trainers.tune import PROBE_IMAGES, FormatTrial, fastest, time_step

__all__ = ["TrainConfig", "EpochReport", "TrainResult", "NonFiniteLossError", "train", "train_model",
           "evaluate", "cosine_lr", "learning_rate"]

CHECK_BATCH = 32  # validation images used for the deploy-equality check
_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
_FORMAT = 1  # checkpoint layout version


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300  # the papers' CIFAR schedule; fewer epochs is the main fidelity knob
    batch_size: int = 64  # official CondenseNet(V2) CIFAR batch size
    lr: float = 0.1  # peak of the cosine schedule (official value at batch 64)
    momentum: float = 0.9  # official SGD momentum
    weight_decay: float = 1e-4  # official value; applied to every parameter as in the official code
    nesterov: bool = True  # official code uses nesterov momentum
    schedule: str = "cosine"  # "cosine" (per iteration, to 0) or "step" (x0.1 at each milestone)
    milestones: tuple = ()  # "step": fractions of training in (0, 1) where the rate is multiplied by 0.1
    augment: bool = True  # pad + random crop (+ flip where label-preserving), as in the papers
    device: str = "auto"  # "auto": CUDA when available, else CPU; or any torch device string
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None: leave as is
    amp: bool = True  # CUDA only: bf16 autocast (fp16 + GradScaler where bf16 is unsupported)
    channels_last: bool = True  # allow channels-last memory (autotune picks; without it: CUDA only)
    condensed_training: bool = True  # allow training the condensed form once all masks are final (same steps)
    autotune: bool = True  # time the allowed options above and keep the fastest (see trainers.tune)
    eval_test: bool = False  # test accuracy is for final reporting only, never for selection
    measure_latency: bool = False  # batch-1 latency of the deploy form, after training
    seed: int = 0  # model init, data order and augmentation
    eval_batch_size: int = 256  # evaluation only: larger batches, same result in eval mode
    latency_device: str | None = None  # None: the training device
    check_every: int = 0  # steps between loss checks; 0: every step on CPU, every 50 on CUDA (syncs)
    # Timed choices to replay instead of timing (an earlier run's TrainResult.choices): same numbers.
    # Keys: "memory_format" ("contiguous" / "channels_last"), "condense" (a format, or "masked").
    choices: dict | None = None
    retry_seed_offset: int = 0  # diverged attempts before this one: trains from seed + this, from scratch

    @property
    def run_seed(self) -> int:
        """The seed this run trains from (``seed``, moved on by each retry of a diverged run)."""
        return self.seed + self.retry_seed_offset

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        bad = {k: v for k, v in positive.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"must be positive integers, but got {bad}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, but got lr={self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), but got momentum={self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0, but got momentum=0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, but got weight_decay={self.weight_decay!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, but got threads={self.threads!r}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0, but got check_every={self.check_every!r}")
        object.__setattr__(self, "milestones", tuple(self.milestones))  # a list when it came through JSON
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', but got schedule={self.schedule!r}")
        if self.schedule == "step" and not (self.milestones and all(0 < m < 1 for m in self.milestones)
                                            and list(self.milestones) == sorted(self.milestones)):
            raise ValueError(f"a step schedule needs increasing milestones in (0, 1), but got "
                             f"milestones={self.milestones!r}")
        _device(self.device)  # raises on a malformed device string
        if isinstance(self.retry_seed_offset, bool) or not isinstance(self.retry_seed_offset, int) \
                or self.retry_seed_offset < 0:
            raise ValueError(f"retry_seed_offset must be an integer >= 0, but got {self.retry_seed_offset!r}")
        if self.choices is not None:
            _check_choices(self.choices)


_CHOICES = {"memory_format": tuple(_FORMATS), "condense": (*_FORMATS, "masked")}


def _check_choices(choices: Any) -> None:
    if not isinstance(choices, dict):
        raise ValueError(f"choices must be a dict such as TrainResult.choices, but got {choices!r}")
    for key, value in choices.items():
        if key not in _CHOICES:
            raise ValueError(f"choices: unknown key {key!r}; known: {sorted(_CHOICES)}")
        if value not in _CHOICES[key]:
            raise ValueError(f"choices.{key} must be one of {list(_CHOICES[key])}, but got {value!r}")


@dataclass
class EpochReport:
    epoch: int  # epochs completed (1 after the first)
    val_acc: float  # fraction in [0, 1]
    val_loss: float
    train_loss: float  # mean training loss over the epoch
    elapsed_s: float  # training seconds so far (all epochs, across resumes)
    images_per_s: float  # training throughput of this epoch (evaluation excluded)
    lr: float = 0.0  # learning rate of the epoch's last step
    form: str = "train"  # "train" (masked) or "condensed" at the end of the epoch


@dataclass
class TrainResult:
    val_acc: float  # fraction in [0, 1], of the deploy form (last epoch's if stopped early)
    val_loss: float
    test_acc: float | None  # None unless eval_test
    epochs: int  # epochs reached
    train_seconds: float
    latency_ms: float | None  # None unless measure_latency
    deploy_max_abs_diff: float | None  # largest training-vs-deploy output gap seen; None if never converted
    checkpoint_path: str | None
    stopped_early: bool
    test_loss: float | None = None
    deploy_path: str | None = None  # deploy.pt: state_dict of to_deploy(build() at progress 1)
    resumed_from_epoch: int | None = None  # epochs a checkpoint already held when this run began
    condensed_at: float | None = None  # training progress where training switched to the condensed form
    memory_format: str = "contiguous"  # "contiguous" (NCHW) or "channels_last", at the end of training
    tuning: dict = field(default_factory=dict)  # autotune timings: seconds per probe step of each option
    history: list = field(default_factory=list)  # EpochReport dicts
    # The timed choices this run took (made or replayed; TrainConfig.choices replays them): what,
    # besides the architecture, data, recipe and seed, decides its numbers.
    choices: dict = field(default_factory=dict)
    seed: int = 0  # the seed it trained from (TrainConfig.run_seed)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (diverged); ``epoch`` and ``step`` say where."""

    def __init__(self, epoch: int, step: int, loss: float = math.nan, lr: float | None = None):
        self.epoch, self.step, self.loss, self.lr = epoch, step, loss, lr
        at_lr = f" at lr={lr:.4g}" if lr is not None else ""
        super().__init__(f"training loss became {loss} in epoch {epoch}, step {step} (1-based batch of "
                         f"that epoch){at_lr}: the run diverged; try a lower learning rate")

    def __reduce__(self):  # Ray ships exceptions between processes: rebuild from the fields
        return type(self), (self.epoch, self.step, self.loss, self.lr)


# --- small helpers ------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"invalid device {name!r}: {e}") from None


def cosine_lr(iteration: int, total: int, peak: float) -> float:
    """Official CondenseNet schedule: ``0.5 * peak * (1 + cos(pi * iteration / total))``."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * iteration / total))


def learning_rate(cfg: TrainConfig, iteration: int, total: int) -> float:
    """The rate of ``iteration`` of ``total``: cosine, or step decay by 0.1 at each milestone passed
    (milestones are fractions of training, so they scale with the study's epochs)."""
    if cfg.schedule == "cosine":
        return cosine_lr(iteration, total, cfg.lr)
    return cfg.lr * 0.1 ** sum(iteration >= m * total for m in cfg.milestones)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not (cfg.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device | str, mean, std,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """Accuracy (fraction) and mean cross-entropy of ``model`` in eval mode on uint8 images ``x``.

    The model's training mode is restored afterwards; an empty set gives (nan, nan).
    """
    if len(y) == 0:
        return math.nan, math.nan
    device = torch.device(device)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i in range(0, len(y), batch_size):
            xb = normalize(x[i:i + batch_size].to(device), mean_t, std_t, memory_format)
            yb = y[i:i + batch_size].to(device)
            out = model(xb).float()
            loss_sum += F.cross_entropy(out, yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(y), loss_sum.item() / len(y)


# --- run state ----------------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything that changes while training; what a checkpoint must hold."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    form: str = "train"  # "train" (masked) or "condensed"
    epoch: int = 0  # epochs completed
    seconds: float = 0.0  # training seconds so far
    switch_iteration: int | None = None  # iteration at which training switched to the condensed form
    probe_pending: bool = True  # masks changed since the last finality probe
    deploy_diff: float | None = None
    ties: dict = field(default_factory=dict)  # condensed parameters holding copies of one element
    memory_format: str = "contiguous"  # key of _FORMATS
    format_trial: FormatTrial | None = None  # memory formats still being timed
    tuning: dict = field(default_factory=dict)  # autotune timings
    choices: dict = field(default_factory=dict)  # timed choices taken (TrainResult.choices)
    history: list = field(default_factory=list)

    @property
    def format(self) -> torch.memory_format:
        return _FORMATS[self.memory_format]


@dataclass
class _Setup:
    """What stays fixed during a run."""

    cfg: TrainConfig
    data: DataSplits
    device: torch.device
    augmenter: Augmenter
    train_x: torch.Tensor  # on the device
    train_y: torch.Tensor
    batches: int  # per epoch
    amp_dtype: torch.dtype | None
    scheduled: bool  # the model has a mask schedule

    @property
    def total(self) -> int:
        return self.cfg.epochs * self.batches

    def check_batch(self) -> torch.Tensor:
        x = self.data.val_x if len(self.data.val_y) else self.data.train_x
        return self.augmenter.eval(x[:CHECK_BATCH])


# --- memory format and condensation --------------------------------------------------------------

def _format_options(cfg: TrainConfig, device: torch.device) -> list[str]:
    if not cfg.channels_last:
        return ["contiguous"]
    if not cfg.autotune:
        return ["channels_last" if device.type == "cuda" else "contiguous"]
    return ["contiguous", "channels_last"]


def _set_format(run: _Run, setup: _Setup, name: str) -> None:
    run.memory_format = name
    run.model.to(memory_format=_FORMATS[name])  # in place: the optimizer keeps its parameters
    setup.augmenter.memory_format = _FORMATS[name]


def _pinned(cfg: TrainConfig, key: str, options: list[str], extra: tuple = ()) -> str | None:
    """The replayed choice ``key`` (None: none given), which the run's settings must allow."""
    value = (cfg.choices or {}).get(key)
    if value is not None and value not in (*options, *extra):
        raise ValueError(f"choices.{key}={value!r} cannot be replayed: this run allows {[*options, *extra]} "
                         f"(channels_last={cfg.channels_last}, autotune={cfg.autotune}, device={cfg.device!r})")
    return value


def _start_format(run: _Run, setup: _Setup) -> None:
    """Before the first step: one memory format, or a trial of the allowed ones."""
    options = _format_options(setup.cfg, setup.device)
    pinned = _pinned(setup.cfg, "memory_format", options)
    if len(options) > 1:
        run.format_trial = FormatTrial(options, chosen=pinned)
    else:
        run.choices["memory_format"] = options[0]
    _set_format(run, setup, options[0])


def _trial_format(run: _Run, setup: _Setup) -> bool:
    """Put the model in the format the trial wants for this step; False when no trial runs."""
    if run.format_trial is None:
        return False
    _set_format(run, setup, run.format_trial.current())
    _sync(setup.device)
    return True


def _record_format(run: _Run, setup: _Setup, seconds: float) -> None:
    trial = run.format_trial
    trial.record(seconds)
    if trial.done:
        run.tuning["memory_format"] = dict(trial.times)
        run.format_trial = None
        run.choices["memory_format"] = trial.best()
        _set_format(run, setup, trial.best())


def _maybe_condense(run: _Run, setup: _Setup, iteration: int, changed: bool,
                    x: torch.Tensor, y: torch.Tensor) -> None:
    """Switch to the condensed form once every mask is final (see the module docstring)."""
    run.probe_pending |= changed
    progress = iteration / setup.total
    if changed or progress < 0.5 or not run.probe_pending:
        return
    run.probe_pending = False
    if masks_final(run.model):
        _switch_to_condensed(run, setup, iteration, x[:PROBE_IMAGES], y[:PROBE_IMAGES])


def _condensed_format(run: _Run, setup: _Setup, deployed: nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> str | None:
    """Memory format to train the condensed form in, or None where the masked form is faster
    (replayed from ``choices`` when given there)."""
    options = _format_options(setup.cfg, setup.device)
    pinned = _pinned(setup.cfg, "condense", options, extra=("masked",))
    if pinned is not None:
        fmt = None if pinned == "masked" else pinned
    elif not setup.cfg.autotune:
        fmt = run.memory_format
    else:
        # The masked form is warm in its format; a slow single run of a condensed candidate only
        # keeps the masked form, the safe side.
        times = {("train", run.memory_format): time_step(run.model, x, y, run.format, setup.amp_dtype, warmup=0)}
        for f in options:
            times[("condensed", f)] = time_step(deployed, x, y, _FORMATS[f], setup.amp_dtype, repeats=1)
        run.tuning["condense"] = {f"{form}/{f}": t for (form, f), t in times.items()}
        form, best = fastest(times)
        fmt = best if form == "condensed" else None
    run.choices["condense"] = fmt or "masked"
    return fmt


def _switch_to_condensed(run: _Run, setup: _Setup, iteration: int, x: torch.Tensor, y: torch.Tensor) -> None:
    model = run.model
    deployed = to_deploy(model)
    fmt = _condensed_format(run, setup, deployed, x, y)
    if fmt is None:
        return
    run.deploy_diff = max(run.deploy_diff or 0.0, check_deploy(model, deployed, setup.check_batch()))
    optimizer = _make_optimizer(deployed, setup.cfg)
    sources = element_sources(model, deployed)
    carry_momentum(run.optimizer, model, optimizer, deployed, sources)
    run.ties = find_ties(deployed, sources)
    tie_gradients(deployed, run.ties)
    run.model = deployed.train()
    run.optimizer, run.form, run.switch_iteration = optimizer, "condensed", iteration
    _set_format(run, setup, fmt)


# --- one epoch ----------------------------------------------------------------------------------

def _check_finite(losses: torch.Tensor, start: int, stop: int, epoch: int, lr: float) -> None:
    window = losses[start:stop]
    finite = torch.isfinite(window)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(epoch + 1, start + first + 1, float(window[first]), lr)


def _train_epoch(run: _Run, setup: _Setup, epoch: int) -> tuple[float, float]:
    """One pass over the training set; returns (mean training loss, last learning rate)."""
    cfg, aug, batch = setup.cfg, setup.augmenter, setup.cfg.batch_size
    check_every = cfg.check_every or (50 if setup.device.type == "cuda" else 1)
    order = aug.permutation(len(setup.train_y)).to(setup.device)
    losses = torch.zeros(setup.batches, device=setup.device)
    run.model.train()
    checked, lr = 0, cfg.lr
    for i in range(setup.batches):
        timed = _trial_format(run, setup)
        start = time.perf_counter()
        iteration = epoch * setup.batches + i
        idx = order[i * batch:(i + 1) * batch]
        x = aug.train(setup.train_x[idx]) if cfg.augment else aug.eval(setup.train_x[idx])
        y = setup.train_y[idx]
        if run.form == "train" and setup.scheduled:
            changed = set_progress(run.model, iteration / setup.total)
            if cfg.condensed_training:
                _maybe_condense(run, setup, iteration, changed, x, y)
        lr = learning_rate(cfg, iteration, setup.total)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(setup.amp_dtype):
            loss = F.cross_entropy(run.model(x), y)
        losses[i] = loss.detach()
        if (i + 1) % check_every == 0:  # before the step: a diverged batch never touches the weights
            _check_finite(losses, checked, i + 1, epoch, lr)
            checked = i + 1
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if timed:
            _sync(setup.device)
            _record_format(run, setup, time.perf_counter() - start)
    _check_finite(losses, checked, setup.batches, epoch, lr)
    return float(losses.mean()), lr


# --- checkpoints --------------------------------------------------------------------------------

def _run_identity(cfg: TrainConfig, data: DataSplits, meta: dict) -> dict:
    """What must match for a checkpoint to be resumed: the architecture, recipe and data."""
    # How the steps are computed may change between runs (same results up to float rounding); the
    # choices a checkpoint holds are its own (a resumed run keeps them).
    runtime = {"device", "threads", "eval_test", "measure_latency", "eval_batch_size", "latency_device",
               "check_every", "channels_last", "condensed_training", "autotune", "choices"}
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in runtime}
    if not cfg.retry_seed_offset:  # checkpoints written before retries moved the seed stay resumable
        recipe.pop("retry_seed_offset")
    if cfg.schedule == "cosine":  # checkpoints written before step schedules existed stay resumable
        recipe.pop("schedule"), recipe.pop("milestones")
    shape = [data.name, len(data.train_y), len(data.val_y), data.image_size, data.in_channels, data.num_classes]
    return {"meta": meta, "recipe": recipe, "data": shape}


def _earlier_attempt(saved: dict, current: dict) -> bool:
    """Whether ``saved`` is the identity of the same run at an earlier attempt that diverged (a
    smaller ``retry_seed_offset``, everything else equal)."""
    if not isinstance(saved.get("recipe"), dict):
        return False
    then, now = dict(saved["recipe"]), dict(current["recipe"])
    then_offset, now_offset = then.pop("retry_seed_offset", 0), now.pop("retry_seed_offset", 0)
    return then_offset < now_offset and {**saved, "recipe": then} == {**current, "recipe": now}


def _save_checkpoint(path: Path, run: _Run, setup: _Setup, identity: dict) -> None:
    save_atomic({
        "format": _FORMAT,
        "identity": identity,
        "epoch": run.epoch,
        "form": run.form,
        "switch_iteration": run.switch_iteration,
        "probe_pending": run.probe_pending,
        "deploy_diff": run.deploy_diff,
        "ties": run.ties,
        "memory_format": run.memory_format,
        "format_trial": run.format_trial.state() if run.format_trial is not None else None,
        "tuning": run.tuning,
        "choices": run.choices,
        "seconds": run.seconds,
        "history": run.history,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": capture_rng(setup.augmenter.get_state()),
    }, path)


def _check_identity(path: Path, saved: dict, current: dict) -> None:
    if saved == current:
        return
    diffs = []
    for part in current:
        a, b = saved.get(part), current[part]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{part}.{k}: saved {a.get(k)!r}, now {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{part}: saved {a!r}, now {b!r}")
    raise ValueError(f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
                     f"use another checkpoint folder or delete it")


def _resume(path: Path, ckpt: dict, run: _Run, setup: _Setup) -> None:
    """Rebuild the saved form, then load weights, optimizer and random states."""
    if ckpt.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} has format {ckpt.get('format')!r}, expected {_FORMAT}")
    if setup.scheduled:
        # Layers may keep schedule state outside their state_dict: bring them to the last progress
        # the saved run reported (set_progress applies every stage passed), then load over it.
        last = ckpt["switch_iteration"] if ckpt["form"] == "condensed" else ckpt["epoch"] * setup.batches - 1
        if last >= 0:
            set_progress(run.model, last / setup.total)
    if ckpt["form"] == "condensed":
        run.model = to_deploy(run.model).train()
        run.optimizer = _make_optimizer(run.model, setup.cfg)
    _set_format(run, setup, ckpt["memory_format"])
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    setup.augmenter.set_state(restore_rng(ckpt["rng"]))
    run.form, run.epoch, run.seconds = ckpt["form"], ckpt["epoch"], ckpt["seconds"]
    run.switch_iteration, run.probe_pending = ckpt["switch_iteration"], ckpt["probe_pending"]
    run.deploy_diff, run.history, run.ties = ckpt["deploy_diff"], list(ckpt["history"]), ckpt["ties"]
    run.tuning = ckpt["tuning"]
    run.choices = dict(ckpt.get("choices") or {})  # checkpoints from before choices were kept: none known
    run.format_trial = FormatTrial(**ckpt["format_trial"]) if ckpt["format_trial"] is not None else None
    if run.format_trial is not None and run.format_trial.chosen is None:
        run.format_trial.chosen = _pinned(setup.cfg, "memory_format", run.format_trial.options)
    tie_gradients(run.model, run.ties)


# --- the run ------------------------------------------------------------------------------------

def _prepare(build: Callable[[], nn.Module], data: DataSplits, cfg: TrainConfig) -> tuple[_Run, _Setup]:
    device = _device(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if len(data.train_y) == 0:
        raise ValueError("the training split is empty")
    _seed_everything(cfg.run_seed)
    model = build().to(device)
    amp_dtype = _amp_dtype(cfg, device)
    augmenter = Augmenter(data.mean, data.std, device, seed=cfg.run_seed, hflip=data.hflip)
    setup = _Setup(cfg=cfg, data=data, device=device, augmenter=augmenter,
                   train_x=data.train_x.to(device), train_y=data.train_y.to(device),
                   batches=max(1, len(data.train_y) // cfg.batch_size), amp_dtype=amp_dtype,
                   scheduled=has_schedule(model))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return _Run(model=model, optimizer=_make_optimizer(model, cfg), scaler=scaler), setup


def _finish(run: _Run, setup: _Setup, directory: Path | None) -> dict:
    """Convert to the deploy form, check it, measure final metrics on it, save its weights."""
    cfg, data = setup.cfg, setup.data
    deployed = to_deploy(run.model).to(memory_format=run.format)
    diff = check_deploy(run.model, deployed, setup.check_batch())
    out: dict[str, Any] = {"deploy_max_abs_diff": max(diff, run.deploy_diff or 0.0)}
    ev = (cfg.eval_batch_size, setup.device, data.mean, data.std, run.format)
    out["val_acc"], out["val_loss"] = evaluate(deployed, data.val_x, data.val_y, *ev)
    if cfg.eval_test:
        out["test_acc"], out["test_loss"] = evaluate(deployed, data.test_x, data.test_y, *ev)
    if directory is not None:
        save_atomic(deployed.state_dict(), directory / DEPLOY_NAME)
        out["deploy_path"] = str(directory / DEPLOY_NAME)
    if cfg.measure_latency:
        out["latency_ms"] = measure_latency(deployed, data.image_size, data.in_channels,
                                            cfg.latency_device or str(setup.device))
    return out


def train_model(build: Callable[[], nn.Module], data: DataSplits, cfg: TrainConfig,
                report: Callable[[EpochReport], bool | None] | None = None,
                checkpoint_dir: str | Path | None = None, meta: dict | None = None) -> TrainResult:
    """Train the network ``build()`` returns; see :func:`train` (``meta`` identifies the run in
    checkpoints: resuming with a different one raises)."""
    run, setup = _prepare(build, data, cfg)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = directory / CHECKPOINT_NAME if directory is not None else None
    identity = _run_identity(cfg, data, meta or {})
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None and _earlier_attempt(ckpt.get("identity") or {}, identity):
        ckpt = None  # a diverged attempt's: this retry starts afresh from another random state (and replaces it)
    resumed_from = None
    if ckpt is not None:
        _check_identity(ckpt_path, ckpt.get("identity") or {}, identity)
        _resume(ckpt_path, ckpt, run, setup)
        resumed_from = run.epoch
    else:
        _start_format(run, setup)
    stopped = False
    while run.epoch < cfg.epochs and not stopped:
        start = time.perf_counter()
        train_loss, lr = _train_epoch(run, setup, run.epoch)
        train_time = time.perf_counter() - start
        val_acc, val_loss = evaluate(run.model, data.val_x, data.val_y, cfg.eval_batch_size, setup.device,
                                     data.mean, data.std, run.format)
        run.epoch += 1
        run.seconds += time.perf_counter() - start
        epoch_report = EpochReport(run.epoch, val_acc, val_loss, train_loss, run.seconds,
                                   setup.batches * cfg.batch_size / train_time, lr, run.form)
        run.history.append(dataclasses.asdict(epoch_report))
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, run, setup, identity)
        stopped = report is not None and report(epoch_report) is False and run.epoch < cfg.epochs
    last = run.history[-1] if run.history else {"val_acc": math.nan, "val_loss": math.nan}
    final: dict[str, Any] = {"val_acc": last["val_acc"], "val_loss": last["val_loss"],
                             "deploy_max_abs_diff": run.deploy_diff}
    if not stopped:
        start = time.perf_counter()
        final.update(_finish(run, setup, directory))
        run.seconds += time.perf_counter() - start
    condensed_at = run.switch_iteration / setup.total if run.switch_iteration is not None else None
    return TrainResult(
        val_acc=final["val_acc"], val_loss=final["val_loss"], test_acc=final.get("test_acc"),
        epochs=run.epoch, train_seconds=run.seconds, latency_ms=final.get("latency_ms"),
        deploy_max_abs_diff=final["deploy_max_abs_diff"],
        checkpoint_path=str(ckpt_path) if ckpt_path is not None else None, stopped_early=stopped,
        test_loss=final.get("test_loss"), deploy_path=final.get("deploy_path"),
        condensed_at=condensed_at, memory_format=run.memory_format, tuning=run.tuning, history=run.history,
        resumed_from_epoch=resumed_from, choices=dict(run.choices), seed=cfg.run_seed,
    )


def _knobs_json(knobs: Any) -> Any:
    if dataclasses.is_dataclass(knobs):
        from space.registry import knobs_json

        return knobs_json(knobs)
    return repr(knobs)


def train(family: str, knobs: Any, data: DataSplits, cfg: TrainConfig,
          report: Callable[[EpochReport], bool | None] | None = None,
          checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train ``family`` with ``knobs`` on ``data``; final metrics on the deploy form.

    Args:
        report: called after every epoch; returning False stops training after that epoch (early
            stopping by a scheduler): the result then holds that epoch's metrics, no deploy step.
        checkpoint_dir: a checkpoint is written there after every epoch (atomically), and training
            resumes from it if one exists; the deploy weights are saved there as ``deploy.pt``
            (state_dict of ``to_deploy`` of the built network at progress 1).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        DeployMismatchError: the deploy form computes something else than the training form.
        ValueError: a checkpoint in ``checkpoint_dir`` belongs to a different run.
    """
    from space.registry import build_model

    def build() -> nn.Module:
        return build_model(family, knobs, num_classes=data.num_classes, image_size=data.image_size,
                           in_channels=data.in_channels)

    return train_model(build, data, cfg, report, checkpoint_dir,
                       meta={"family": family, "knobs": _knobs_json(knobs)})
