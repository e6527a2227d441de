"""Datasets as uint8 tensors: seeded train / validation split, test set, fidelity knobs.

Everything is loaded once into memory as uint8 NCHW tensors (CIFAR-10 is 150 MB), so the driver can
load a dataset once and ship it to every worker, and the trainer can augment whole batches with
tensor ops on the training device instead of running per-image PIL transforms.

Sources:
- ``cifar10`` / ``cifar100``: the official "python version" pickles in torchvision's layout
  (``<root>/cifar-10-batches-py``, ``<root>/cifar-100-python``), read directly (torchvision's own
  class insists on the official md5 sums, which rules out small generated files in tests) by an
  unpickler that builds only what those files hold (dicts, lists, bytes, integers, one uint8 array),
  so a file under the data root cannot run code; anything else is refused naming the file; when
  ``download`` is set and the files are missing, torchvision fetches them. A folder holding
  ``train.npz`` / ``test.npz`` is accepted too (the arrays format below).
- ``npz``: ``<root>/train.npz`` and ``<root>/test.npz`` with ``images`` (uint8, N x H x W x C or
  N x H x W) and ``labels`` (integers from 0).
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, no download); a fixed test split of
  360 images is carved off with a constant seed, so it is the same for every ``DataConfig.seed``.
- ``mnist`` / ``fashion_mnist``: through torchvision (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``).

The validation split is a seeded random subset of the training set (the selection metric); the
training subset for a lower fidelity is taken from the same permutation, so smaller subsets are
nested in larger ones for the same seed. The test set is used as stored, first ``test_size`` rows.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DataConfig", "DataSplits", "DatasetNotFoundError", "load_data", "DATASETS"]

DATASETS = ("cifar10", "cifar100", "npz", "digits", "mnist", "fashion_mnist")

# Horizontal flips change the meaning of handwritten digits; clothes and CIFAR objects are mirror-safe.
_HFLIP = {"cifar10": True, "cifar100": True, "npz": True, "digits": False, "mnist": False,
          "fashion_mnist": True}

_DIGITS_TEST = 360  # 20% of scikit-learn's 1,797 digits


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    """Which data a trial trains on, and at which fidelity."""

    dataset: str  # one of DATASETS
    root: str | None = None  # folder of the files; None: $EFFNAS_DATA or ./data
    train_size: int | None = None  # training images used (fidelity knob); None: all left after validation
    val_size: int = 5000  # seeded validation split carved from the training set (selection metric)
    test_size: int | None = None  # None: the whole test set (final reporting only)
    image_size: int | None = None  # resize once at load time (fidelity knob); None: native size
    seed: int = 0  # drives the validation split and the training subset
    download: bool = False  # torchvision download when online; tests never download
    hflip: bool | None = None  # random horizontal flips; None: the dataset's default (off for digits)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {list(DATASETS)}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1 or None, but got {self.train_size}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0, but got {self.val_size}")
        if self.test_size is not None and self.test_size < 0:
            raise ValueError(f"test_size must be >= 0 or None, but got {self.test_size}")
        if self.image_size is not None and self.image_size < 4:
            raise ValueError(f"image_size must be >= 4 or None, but got {self.image_size}")


@dataclass
class DataSplits:
    """Loaded data: uint8 NCHW images and int64 labels, plus what a model and the augmentation need."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple  # per channel, in [0, 1], of the training split
    std: tuple
    name: str
    hflip: bool = True  # horizontal flips are label-preserving for this data

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / {len(self.test_y)} test, "
                f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes")


@dataclass
class _Raw:
    train_x: torch.Tensor  # uint8 NCHW
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root or os.environ.get("EFFNAS_DATA", "data")).expanduser().resolve()


def _not_found(dataset: str, looked: list[Path], layout: str, can_download: bool) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    fix = f"Put {layout} there, or point `root` at the folder that holds it"
    if can_download:
        fix += ", or set `download: true` to fetch it with torchvision (needs internet)"
    return DatasetNotFoundError(f"{dataset} not found: looked for {where}. {fix}.")


# --- downloads: what is fetched from where, and what to put in its place -------------------------

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def download_plan(dataset: str, root: Path) -> tuple[str, str] | None:
    """(URL torchvision downloads ``dataset`` from, what to put in ``root`` instead), or None for a
    dataset that is never downloaded."""
    import torchvision

    if dataset in _CIFAR:
        folder, train_files, test_files, *_, tv_name = _CIFAR[dataset]
        files = ", ".join(train_files + test_files)
        return (getattr(torchvision.datasets, tv_name).url,
                f"the extracted folder {root / folder} (files {files}), or train.npz and test.npz in {root}")
    if dataset in ("mnist", "fashion_mnist"):
        cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
        return (f"{cls.mirrors[0]}{cls.resources[0][0]}",
                f"the folder {root / cls.__name__ / 'raw'} with the four uncompressed idx files "
                f"({', '.join(_MNIST_FILES)})")
    return None


def _download_failed(dataset: str, root: Path, error: BaseException) -> DatasetNotFoundError:
    url, instead = download_plan(dataset, root)
    reason = getattr(error, "reason", None)
    if reason is None:  # torchvision's own errors: the last line says what went wrong
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(error).__name__
    reason = str(reason)
    if reason.startswith("<urlopen error ") and reason.endswith(">"):
        reason = reason[len("<urlopen error "):-1]
    return DatasetNotFoundError(
        f"could not download {dataset} from {url} ({reason}); without internet, put {instead} yourself "
        f"(with `download: false` they are used and nothing is downloaded)")


def _fetch(dataset: str, root: Path, fetch: Callable[[], object], folders: tuple[Path, ...] = ()):
    """Run a torchvision download; a failure becomes one line saying what was tried and what to do
    instead. torchvision's own lines ("Failed to download (trying next)") are kept back on failure,
    and the folders the attempt created (``root`` and ``folders`` in it) are removed while empty."""
    import contextlib
    import io

    made = [f for f in (root, *folders) if not f.exists()]
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            result = fetch()
    except Exception as e:  # URLError, HTTPError, OSError, RuntimeError (checksum, all mirrors failed)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder goes
        raise _download_failed(dataset, root, e) from e
    print(said.getvalue(), end="")
    return result


# --- arrays --------------------------------------------------------------------------------------

def _nhwc_to_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: `images` must be uint8, but got {images.dtype}")
    if images.ndim == 3:  # grayscale N x H x W
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{source}: `images` must be N x H x W x C or N x H x W, but got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _labels(labels: np.ndarray, n: int, source: str) -> torch.Tensor:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: `labels` must be {n} integers, but got {labels.dtype} of shape {labels.shape}")
    if n and labels.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, but the smallest is {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def _read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as arrays:
        missing = {"images", "labels"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {arrays.files}")
        x = _nhwc_to_nchw(arrays["images"], str(path))
        return x, _labels(arrays["labels"], len(x), str(path))


def _npz_pair(root: Path) -> _Raw | None:
    train, test = root / "train.npz", root / "test.npz"
    if not (train.is_file() and test.is_file()):
        return None
    train_x, train_y = _read_npz(train)
    test_x, test_y = _read_npz(test)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"{root}: train images are {tuple(train_x.shape[1:])} but test images "
                         f"{tuple(test_x.shape[1:])}")
    num_classes = int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1
    return _Raw(train_x, train_y, test_x, test_y, num_classes)


def _load_npz(cfg: DataConfig) -> _Raw:
    if cfg.root is None:
        raise DatasetNotFoundError("dataset 'npz' needs `root`: the folder holding train.npz and test.npz")
    root = _root(cfg)
    raw = _npz_pair(root)
    if raw is None:
        raise _not_found("npz dataset", [root / "train.npz", root / "test.npz"],
                         "train.npz and test.npz (arrays `images`: uint8 N x H x W x C, `labels`)", False)
    return raw


# --- CIFAR ---------------------------------------------------------------------------------------

_CIFAR = {
    # name: (folder, training files, test files, label key, classes, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "CIFAR100"),
}


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (and no other codec)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"it encodes with {encoding!r}, which an official CIFAR batch never does")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """What pickled uint8 arrays refer to, under the module names numpy 1.x and 2.x write: the
    official batches (Python 2, protocol 2) name ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``; files written today (protocol 5) name
    ``numpy._core.numeric._frombuffer`` instead of ``_reconstruct``."""
    probe = np.zeros(1, dtype=np.uint8)
    reconstruct = probe.__reduce__()[0]
    frombuffer = probe.__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1}  # bytes in protocol 2 written by Python 3
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Reads the official CIFAR python batches and nothing else: a batch is a dict of bytes, lists
    of integers and bytes, and one uint8 array, so the only globals it may name are numpy's array
    reconstruction functions. Any other global (``os.system``, ``builtins.open``, ...) is refused
    before it is called: a file under ``data.root`` cannot run code."""

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str):
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which an official CIFAR batch never holds")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds persistent references, which an official CIFAR batch never holds")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one official python-version batch file."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not an official CIFAR python batch file ({why}); replace it with the "
                          f"extracted official archive, or convert the data to train.npz/test.npz")

    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError) as e:
        raise bad(str(e) or type(e).__name__) from None
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise bad(f"expected a dict with {b'data'!r} and {label_key!r}, got {keys}")
    data, labels = entry[b"data"], entry[label_key]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"{b'data'!r} must be a uint8 N x 3072 array, got a {what}")
    if not (isinstance(labels, list) and len(labels) == len(data)
            and all(type(v) is int for v in labels)):  # noqa: E721 (bool is not a label)
        raise bad(f"{label_key!r} must be a list of {len(data)} integers")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_pickles(paths: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in paths:
        x, y = _read_cifar_batch(path, label_key)
        images.append(x)
        labels.extend(y)
    x = torch.from_numpy(np.concatenate(images))
    return x, _labels(np.asarray(labels), len(x), str(paths[0].parent))


def _load_cifar(cfg: DataConfig) -> _Raw:
    folder, train_files, test_files, label_key, classes, tv_name = _CIFAR[cfg.dataset]
    root = _root(cfg)
    raw = _npz_pair(root)
    if raw is not None:
        if raw.num_classes > classes:
            raise ValueError(f"{root}: labels go up to {raw.num_classes - 1}, too many for {cfg.dataset}")
        raw.num_classes = classes
        return raw
    candidates = [root / folder, root]  # the parent folder (torchvision's root) or the folder itself
    base = next((c for c in candidates if all((c / f).is_file() for f in train_files + test_files)), None)
    if base is None and cfg.download:
        import torchvision

        _fetch(cfg.dataset, root, lambda: getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True))
        base = root / folder
    if base is None:
        raise _not_found(cfg.dataset, [root / folder / f for f in train_files + test_files],
                         f"the extracted official python-version folder {folder!r} (or train.npz/test.npz)",
                         True)
    train_x, train_y = _read_cifar_pickles([base / f for f in train_files], label_key)
    test_x, test_y = _read_cifar_pickles([base / f for f in test_files], label_key)
    return _Raw(train_x, train_y, test_x, test_y, classes)


# --- MNIST family, digits ------------------------------------------------------------------------

def _load_mnist(cfg: DataConfig) -> _Raw:
    import torchvision

    cls = torchvision.datasets.MNIST if cfg.dataset == "mnist" else torchvision.datasets.FashionMNIST
    root = _root(cfg)
    if cfg.download:
        _fetch(cfg.dataset, root, lambda: cls(str(root), train=True, download=True),
               (root / cls.__name__, root / cls.__name__ / "raw"))
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as e:
        raise _not_found(cfg.dataset, [root / cls.__name__ / "raw"],
                         "the four idx files (train-images-idx3-ubyte, ...)", True) from e
    return _Raw(train.data[:, None].contiguous(), train.targets.long(),
                test.data[:, None].contiguous(), test.targets.long(), 10)


def _load_digits(cfg: DataConfig) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16; stretch them to 0..255 so all datasets share one uint8 pipeline.
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))  # fixed: same test set always
    test, train = order[:_DIGITS_TEST], order[_DIGITS_TEST:]
    return _Raw(x[train], y[train], x[test], y[test], 10)


_LOADERS: dict[str, Callable[[DataConfig], _Raw]] = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "npz": _load_npz,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "fashion_mnist": _load_mnist,
}


# --- splitting, resizing, statistics -----------------------------------------------------------

def _split_indices(n: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.val_size >= n:
        raise ValueError(f"val_size={cfg.val_size} leaves no training images: {cfg.dataset} has {n} "
                         f"training images; choose a smaller val_size")
    available = n - cfg.val_size
    if cfg.train_size is not None and cfg.train_size > available:
        raise ValueError(f"train_size={cfg.train_size} is more than the {available} training images left "
                         f"after val_size={cfg.val_size} (of {n}) in {cfg.dataset}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    val = order[: cfg.val_size]
    train = order[cfg.val_size: cfg.val_size + (cfg.train_size or available)]
    return train, val


def resize_images(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 NCHW images resized to ``size`` x ``size`` as the loaders do (bilinear, antialiased);
    exported models' ``prepare`` uses it too, so deployed inputs match the training ones."""
    if x.shape[-2:] == (size, size) or len(x) == 0:
        return x
    out = torch.empty(len(x), x.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        part = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        out[i:i + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _channel_stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0, 1] units, exact: from a 256-bin histogram of each channel."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean).square()).sum() / counts.sum()
        means.append(float(mean) / 255)
        stds.append(max(float(var), 1e-12) ** 0.5 / 255)
    return tuple(means), tuple(stds)


def load_data(cfg: DataConfig) -> DataSplits:
    """Load ``cfg.dataset`` into memory and split it.

    Raises:
        DatasetNotFoundError: the files are missing (the message says where to put them).
        ValueError: the files are malformed, or the split sizes do not fit the dataset.
    """
    raw = _LOADERS[cfg.dataset](cfg)
    h, w = raw.train_x.shape[-2:]
    if cfg.image_size is None and h != w:
        raise ValueError(f"{cfg.dataset}: images are {h}x{w}; set image_size to resize them to a square")
    size = cfg.image_size or h
    train_idx, val_idx = _split_indices(len(raw.train_y), cfg)
    n_test = len(raw.test_y) if cfg.test_size is None else min(cfg.test_size, len(raw.test_y))
    train_x = resize_images(raw.train_x[train_idx], size)
    mean, std = _channel_stats(train_x)
    return DataSplits(
        train_x=train_x,
        train_y=raw.train_y[train_idx],
        val_x=resize_images(raw.train_x[val_idx], size),
        val_y=raw.train_y[val_idx],
        test_x=resize_images(raw.test_x[:n_test].clone(), size),  # clone: a view would pickle the whole set
        test_y=raw.test_y[:n_test].clone(),
        num_classes=raw.num_classes,
        in_channels=int(raw.train_x.shape[1]),
        image_size=size,
        mean=mean,
        std=std,
        name=cfg.dataset,
        hflip=_HFLIP[cfg.dataset] if cfg.hflip is None else cfg.hflip,
    )
