"""Data loading and batch augmentation (trainers.data, trainers.augment): small generated files."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.augment import Augmenter, crop_flip, default_pad, normalize
from trainers.data import DataConfig, DatasetNotFoundError, load_data


def _images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """NHWC uint8 images whose first pixel encodes their index (to follow them through splits)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 1, 0] = np.arange(n) // 256
    return x


def _ids(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist())


def _write_npz(folder, n_train=60, n_test=12, size=8, channels=3):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", images=_images(n_train, size, channels), labels=np.arange(n_train) % 5)
    np.savez(folder / "test.npz", images=_images(n_test, size, channels, seed=1), labels=np.arange(n_test) % 5)
    return folder


# --- npz ----------------------------------------------------------------------------------------

def test_npz_split_sizes_types_and_disjointness(tmp_path):
    root = _write_npz(tmp_path)
    d = load_data(DataConfig("npz", root=str(root), val_size=10, train_size=30, test_size=5, seed=3))
    assert (d.train_x.shape, d.val_x.shape, d.test_x.shape) == ((30, 3, 8, 8), (10, 3, 8, 8), (5, 3, 8, 8))
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert (d.num_classes, d.in_channels, d.image_size, d.name, d.hflip) == (5, 3, 8, "npz", True)
    assert not _ids(d.train_x) & _ids(d.val_x)
    # NHWC -> NCHW: channel 0 of pixel (0, 0) is the encoded index, labels follow their images
    ids = d.train_x[:, 0, 0, 0].long() + 256 * d.train_x[:, 0, 0, 1].long()
    assert torch.equal(d.train_y, ids % 5)
    assert torch.equal(d.test_x, torch.from_numpy(_images(12, 8, seed=1)[:5]).permute(0, 3, 1, 2))


def test_npz_split_is_seeded_and_nested(tmp_path):
    root = str(_write_npz(tmp_path))
    a = load_data(DataConfig("npz", root=root, val_size=10, train_size=30, seed=3))
    b = load_data(DataConfig("npz", root=root, val_size=10, train_size=30, seed=3))
    c = load_data(DataConfig("npz", root=root, val_size=10, train_size=30, seed=4))
    small = load_data(DataConfig("npz", root=root, val_size=10, train_size=12, seed=3))
    full = load_data(DataConfig("npz", root=root, val_size=10, seed=3))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_x, b.val_x)
    assert not torch.equal(a.val_x, c.val_x)
    assert torch.equal(small.train_x, a.train_x[:12]) and torch.equal(small.val_x, a.val_x)
    assert len(full.train_y) == 50 and len(full.test_y) == 12


def test_npz_channel_statistics_are_exact(tmp_path):
    root = _write_npz(tmp_path)
    d = load_data(DataConfig("npz", root=str(root), val_size=10))
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert d.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_npz_grayscale_and_resize(tmp_path):
    root = tmp_path / "gray"
    root.mkdir()
    np.savez(root / "train.npz", images=_images(20, 12, 1)[..., 0], labels=np.zeros(20, dtype=np.int64))
    np.savez(root / "test.npz", images=_images(4, 12, 1)[..., 0], labels=np.ones(4, dtype=np.int64))
    d = load_data(DataConfig("npz", root=str(root), val_size=4, image_size=6))
    assert d.train_x.shape == (16, 1, 6, 6) and d.in_channels == 1 and d.image_size == 6
    assert d.num_classes == 2


@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, np.int64), "must be uint8"),
    (np.zeros((4, 8), np.uint8), np.zeros(4, np.int64), "N x H x W x C"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3, np.int64), "must be 4 integers"),
    (np.zeros((4, 8, 8, 3), np.uint8), -np.ones(4, np.int64), "must be >= 0"),
])
def test_npz_malformed_arrays(tmp_path, images, labels, match):
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    np.savez(tmp_path / "test.npz", images=images, labels=labels)
    with pytest.raises(ValueError, match=match):
        load_data(DataConfig("npz", root=str(tmp_path), val_size=1))


# --- CIFAR layout ----------------------------------------------------------------------------------

def _pickle(path, data: np.ndarray, label_key: bytes, labels) -> None:
    entry = {b"data": data.reshape(len(data), -1), label_key: list(labels), b"batch_label": b"generated"}
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [label // 5 for label in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def test_cifar100_official_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = _images(30, seed=2).transpose(0, 3, 1, 2)  # the pickles hold R, G, B planes of 1,024 bytes
    test = _images(8, seed=3).transpose(0, 3, 1, 2)
    _pickle(folder / "train", train, b"fine_labels", [i * 3 % 100 for i in range(30)])
    _pickle(folder / "test", test, b"fine_labels", [99 - i for i in range(8)])
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, f)
    d = load_data(DataConfig("cifar100", root=str(tmp_path), val_size=6))
    assert d.num_classes == 100 and len(d.train_y) == 24 and len(d.val_y) == 6
    assert torch.equal(d.test_x, torch.from_numpy(test)) and d.test_y.tolist() == [99 - i for i in range(8)]
    ids = d.train_x[:, 0, 0, 0].long() + 256 * d.train_x[:, 0, 0, 1].long()
    assert torch.equal(d.train_y, ids * 3 % 100)


def test_cifar10_official_layout_or_folder_itself(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", _images(4, seed=i).transpose(0, 3, 1, 2), b"labels", range(4))
    _pickle(folder / "test_batch", _images(4, seed=9).transpose(0, 3, 1, 2), b"labels", [9, 8, 7, 6])
    for root in (tmp_path, folder):
        d = load_data(DataConfig("cifar10", root=str(root), val_size=5))
        assert (len(d.train_y), len(d.val_y), d.num_classes, d.test_y.tolist()) == (15, 5, 10, [9, 8, 7, 6])


def test_cifar10_from_npz_folder(tmp_path):
    d = load_data(DataConfig("cifar10", root=str(_write_npz(tmp_path)), val_size=10))
    assert d.num_classes == 10 and d.name == "cifar10"


# --- digits, missing data, bad input --------------------------------------------------------------

def test_digits_fixed_test_split():
    a = load_data(DataConfig("digits", val_size=300, seed=0))
    b = load_data(DataConfig("digits", val_size=300, seed=1))
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (1137, 300, 360)
    assert a.train_x.shape[1:] == (1, 8, 8) and a.num_classes == 10 and a.hflip is False
    assert int(a.train_x.max()) == 255 and int(a.train_x.min()) == 0
    assert torch.equal(a.test_x, b.test_x) and not torch.equal(a.val_x, b.val_x)


@pytest.mark.parametrize("dataset, expected", [
    ("cifar100", ["cifar-100-python", "download: true"]),
    ("cifar10", ["cifar-10-batches-py", "data_batch_1", "train.npz"]),
    ("mnist", ["MNIST", "download: true"]),
])
def test_missing_dataset_says_where_and_how(tmp_path, dataset, expected):
    with pytest.raises(DatasetNotFoundError) as info:
        load_data(DataConfig(dataset, root=str(tmp_path / "empty")))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "empty") in message and all(part in message for part in expected)


def test_missing_npz_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs `root`"):
        load_data(DataConfig("npz"))
    with pytest.raises(DatasetNotFoundError, match="train.npz.*test.npz"):
        load_data(DataConfig("npz", root=str(tmp_path)))


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"dataset": "digits", "train_size": 0}, "train_size must be >= 1"),
    ({"dataset": "digits", "val_size": -1}, "val_size must be >= 0"),
    ({"dataset": "digits", "test_size": -2}, "test_size must be >= 0"),
    ({"dataset": "digits", "image_size": 2}, "image_size must be >= 4"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"val_size": 1437}, "val_size=1437 leaves no training images"),
    ({"val_size": 300, "train_size": 1200}, "train_size=1200 is more than the 1137"),
])
def test_split_sizes_must_fit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_data(DataConfig("digits", **kwargs))


def test_splits_pickle_round_trip():
    d = load_data(DataConfig("digits", val_size=100, test_size=10))
    e = pickle.loads(pickle.dumps(d))
    assert torch.equal(e.train_x, d.train_x) and e.mean == d.mean and e.test_x.shape == (10, 1, 8, 8)


# --- augmentation --------------------------------------------------------------------------------

def test_crop_flip_matches_per_image_reference():
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    out = crop_flip(x, 2, True, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # same draws, same order: dy, dx, flip
    dy = torch.randint(0, 5, (6, 1), generator=g)
    dx = torch.randint(0, 5, (6, 1), generator=g)
    flip = torch.rand(6, 1, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, dy[i, 0]:dy[i, 0] + 5, dx[i, 0]:dx[i, 0] + 7]
        assert torch.equal(out[i], crop.flip(-1) if flip[i, 0] else crop)
    assert 0 < int(flip.sum()) < 6  # both branches were exercised


def test_crop_without_pad_or_flip_is_identity():
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(crop_flip(x, 0, False, torch.Generator()), x)


def test_normalize_and_default_pad():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    expected = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), expected, atol=1e-6)
    assert [default_pad(s) for s in (8, 16, 28, 32, 64)] == [1, 2, 4, 4, 8]


def test_augmenter_is_seeded_and_restorable():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a, b = Augmenter([0.5] * 3, [0.25] * 3, "cpu", seed=1), Augmenter([0.5] * 3, [0.25] * 3, "cpu", seed=1)
    assert torch.equal(a.train(x), b.train(x)) and torch.equal(a.permutation(9), b.permutation(9))
    state = a.get_state()
    first = a.train(x)
    a.set_state(state)
    assert torch.equal(a.train(x), first)
    assert not torch.equal(a.train(x), first)
