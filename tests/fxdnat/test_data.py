"""Tests for fxdnat.data on tiny fake copies written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import re
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import DistributedSampler

from fxdnat import data
from fxdnat.data import Cutout, DataError, dataset_info, make_datasets, make_loaders

CIFAR_NAMES = b"airplane automobile bird cat deer dog frog horse ship truck".split()
PER_BATCH = 6  # images per fake CIFAR batch file: 30 train, 6 test


def _normalise(images: torch.Tensor, info: data.DatasetInfo) -> torch.Tensor:
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    return (images.float() / 255 - mean) / std


# --- fake data sets in the real layouts -----------------------------------------------------


def _pickle(path: Path, obj: object) -> None:
    # The real files are Python 2 pickles (protocol 2) of dicts with bytes keys.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(PER_BATCH)]
        _pickle(folder / name, {b"batch_label": name.encode(), b"data": images, b"labels": labels})
        written[name] = (images, labels)
    _pickle(folder / "batches.meta", {b"label_names": CIFAR_NAMES, b"num_vis": 3072})
    return written


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    return tmp_path, _write_cifar(tmp_path)


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 64), fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537", "n09999999"]  # deliberately unsorted, like the real file
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tcat\n")
    for k, wnid in enumerate(wnids):
        for j in range(2):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", seed=10 * k + j)
    lines = []
    for j, wnid in enumerate(["n09999999", "n01443537", "n02124075", "n01443537"]):
        _jpeg(folder / "val" / "images" / f"val_{j}.JPEG", seed=100 + j)
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for split, count in (("train", 3), ("test", 1)):
        for k, name in enumerate(["cat", "dog"]):
            for j in range(count):
                _jpeg(root / split / name / f"{j}.png", seed=k * 10 + j, size=(48, 40), fmt="PNG")
    (root / "train" / "notes.txt").write_text("not a class")
    return root


# --- names and errors -----------------------------------------------------------------------


def test_unknown_name_suggests_close_match() -> None:
    accepted = (
        "accepted: digits, digits-hard, cifar10, tinyimagenet, imagefolder:PATH, text:pydoc, "
        "text:PATH"
    )
    with pytest.raises(ValueError) as err:
        dataset_info("CIFAR-10")
    assert str(err.value) == f"unknown data set 'CIFAR-10'; did you mean 'cifar10'? {accepted}"
    with pytest.raises(ValueError) as err:
        make_datasets("mnist")
    assert str(err.value) == f"unknown data set 'mnist'; {accepted}"
    with pytest.raises(ValueError, match=re.escape("use 'imagefolder:PATH'")):
        dataset_info("imagefolder")


def test_missing_data_sets_say_where_and_how(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError) as err:
        make_datasets("cifar10", tmp_path)
    assert str(err.value) == (
        f"CIFAR-10 not found at {tmp_path}/cifar-10-batches-py; pass --download to fetch it, "
        "or place torchvision's cifar-10-batches-py there"
    )
    with pytest.raises(DataError) as err:
        make_datasets("tinyimagenet", tmp_path)
    assert str(err.value) == (
        f"Tiny ImageNet not found at {tmp_path}/tiny-imagenet-200; pass --download to fetch it, "
        f"or unpack http://cs231n.stanford.edu/tiny-imagenet-200.zip into {tmp_path}"
    )
    with pytest.raises(DataError) as err:
        make_datasets(f"imagefolder:{tmp_path}/x")
    assert str(err.value) == (
        f"image folder not found at {tmp_path}/x: expected {tmp_path}/x/train and "
        f"{tmp_path}/x/val (or {tmp_path}/x/test) holding one sub-folder of images per class "
        "(ImageFolder layout)"
    )
    monkeypatch.setenv("FXDNAT_DATA", str(tmp_path / "env"))  # the default data directory
    with pytest.raises(DataError, match=re.escape(f"at {tmp_path}/env/cifar-10-batches-py;")):
        make_datasets("cifar10")


def test_missing_cifar_file_is_named(cifar) -> None:
    root, _ = cifar
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        make_datasets("cifar10", root)
    assert str(err.value) == (
        f"CIFAR-10 file missing: {root}/cifar-10-batches-py/data_batch_4; pass --download to "
        "fetch it, or place torchvision's cifar-10-batches-py there"
    )


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 `str` as cPickle writes it: SHORT_BINSTRING (U) or BINSTRING (T)."""
    size = bytes([len(raw)]) if len(raw) < 256 else struct.pack("<i", len(raw))
    return (b"U" if len(raw) < 256 else b"T") + size + raw


def _py2_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle (protocol 2) and NumPy 1 wrote into the real batch files."""
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R"  # dtype('u1', 0, 1)
        + b"(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    shape = b"(" + b"".join(b"M" + struct.pack("<H", d) for d in images.shape) + b"t"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R(K\x01"
        + shape
        + dtype
        + b"\x89"
        + _py2_str(images.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([y]) for y in labels) + b"e"
    return b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + label_list + b"u."


def test_python2_pickles_like_the_real_files_load(cifar) -> None:
    root, written = cifar
    images, labels = written["data_batch_1"]
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(_py2_pickle(images, labels))
    train, _, info = make_datasets("cifar10", root, augment=False)
    assert train.targets[:PER_BATCH] == labels
    assert_close(train[2][0], _normalise(torch.from_numpy(images[2]).view(3, 32, 32), info))


def test_truncated_pickle_is_a_data_error(cifar) -> None:
    root, _ = cifar
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        make_datasets("cifar10", root)
    assert re.fullmatch(
        rf"corrupt CIFAR-10 file {re.escape(str(path))} \(.+\); "
        rf"delete {re.escape(str(path.parent))} and pass --download",
        str(err.value),
    )


def test_wrong_shape_is_a_data_error(cifar) -> None:
    root, _ = cifar
    path = root / "cifar-10-batches-py" / "test_batch"
    _pickle(path, {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DataError) as err:
        make_datasets("cifar10", root)
    assert str(err.value) == (
        f"corrupt CIFAR-10 file {path} (b'data' is not a uint8 N×3072 array); "
        "delete it and pass --download"
    )


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(cifar) -> None:
    root, _ = cifar
    marker = root / "pwned"
    path = root / "cifar-10-batches-py" / "data_batch_1"
    _pickle(path, {b"data": _Exploit(marker), b"labels": []})
    with pytest.raises(DataError) as err:
        make_datasets("cifar10", root)
    refused = f"refusing to load global '{os.system.__module__}.system'"
    assert str(err.value).startswith(f"corrupt CIFAR-10 file {path} ({refused})")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "what", "url", "target"),
    [
        ("cifar10", "CIFAR-10", data.CIFAR10_URL, "cifar-10-batches-py"),
        ("tinyimagenet", "Tiny ImageNet", data.TINY_URL, "tiny-imagenet-200"),
    ],
)
def test_failed_download_says_how_to_place_files(tmp_path, monkeypatch, name, what, url, target):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        make_datasets(name, tmp_path, download=True)
    assert str(err.value) == (
        f"downloading {what} from {url} failed (<urlopen error [Errno -3] Temporary failure in "
        f"name resolution>); download it elsewhere and unpack it so that {tmp_path}/{target} exists"
    )


def test_download_is_skipped_when_present(cifar, monkeypatch) -> None:
    import torchvision.datasets.utils

    def fail(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fail)
    make_datasets("cifar10", cifar[0], download=True)


# --- digits ---------------------------------------------------------------------------------


def test_digits_split_sizes_and_stratification() -> None:
    train, test, info = make_datasets("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert info == dataset_info("digits") and info.flip is False and info.num_classes == 10
    test_counts = np.bincount(test.targets, minlength=10)
    train_counts = np.bincount(train.targets, minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # 360 / 10, stratified
    assert_close(test_counts / 360, (train_counts + test_counts) / 1797, atol=0.003, rtol=0)
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_digits_split_ignores_the_run_seed() -> None:
    torch.manual_seed(123)
    _, first, _ = make_datasets("digits")
    torch.manual_seed(456)
    _, second, _ = make_datasets("digits")
    assert first.targets == second.targets and torch.equal(first.images, second.images)


def test_digits_stats_match_train_split() -> None:
    train, _, info = make_datasets("digits", augment=False)
    normalised = torch.stack([train[i][0] for i in range(len(train))]).double()
    raw = normalised * info.std[0] + info.mean[0]  # back to 0..1 pixels
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert abs(raw.mean().item() - info.mean[0]) < 5e-5
    assert abs(raw.std(unbiased=False).item() - info.std[0]) < 5e-5


def test_digits_hard_stats_match_train_split() -> None:
    train, test, info = make_datasets("digits-hard", augment=False)
    assert (len(train), len(test), info.input_size) == (250, 1547, 8)
    assert np.bincount(train.targets, minlength=10).tolist() == [25] * 10
    normalised = torch.stack([train[i][0] for i in range(len(train))]).double()
    assert normalised.shape[1:] == (3, 8, 8)
    raw = normalised * info.std[0] + info.mean[0]
    assert abs(raw.mean().item() - info.mean[0]) < 5e-5
    assert abs(raw.std(unbiased=False).item() - info.std[0]) < 5e-5
    again, _, _ = make_datasets("digits-hard", augment=False)  # the noise is fixed, not drawn
    assert torch.equal(again[3][0], train[3][0])


# --- CIFAR-10 -------------------------------------------------------------------------------


def test_cifar_shapes_labels_and_normalisation(cifar) -> None:
    root, written = cifar
    train, test, info = make_datasets("cifar10", root, augment=False)
    assert (len(train), len(test)) == (5 * PER_BATCH, PER_BATCH)
    assert info == dataset_info("cifar10")
    assert info.classes[:3] == ("airplane", "automobile", "bird")
    expected_train = [label for k in range(1, 6) for label in written[f"data_batch_{k}"][1]]
    assert train.targets == expected_train and test.targets == written["test_batch"][1]
    assert np.bincount(train.targets, minlength=10).sum() == 30
    raw = torch.from_numpy(written["data_batch_2"][0][1]).view(3, 32, 32)  # train index 7
    image, label = train[PER_BATCH + 1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label == written["data_batch_2"][1][1]
    assert_close(image, _normalise(raw, info))
    raw_test = torch.from_numpy(written["test_batch"][0][0]).view(3, 32, 32)
    assert_close(test[0][0], _normalise(raw_test, info))


def test_augmentation_changes_train_but_not_test(cifar) -> None:
    train, test, info = make_datasets("cifar10", cifar[0], augment=True)
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(torch.equal(test[0][0], test[0][0]) for _ in range(3))
    raw = torch.from_numpy(cifar[1]["test_batch"][0][0]).view(3, 32, 32)
    assert_close(test[0][0], _normalise(raw, info))
    # Each draw is one of the 9×9 crops of the zero-padded image, flipped or not.
    raw_train = torch.from_numpy(cifar[1]["data_batch_1"][0][0]).view(3, 32, 32)
    padded = _normalise(torch.nn.functional.pad(raw_train, [4] * 4), info)  # 3×40×40
    crops = padded.unfold(1, 32, 1).unfold(2, 32, 1)  # 3×9×9×32×32
    crops = crops.permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
    candidates = torch.cat([crops, crops.flip(-1)])
    assert any(torch.allclose(draws[0], c, atol=1e-6) for c in candidates)


def test_cutout_zeroes_one_square() -> None:
    image = torch.ones(3, 32, 32)
    sizes = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = Cutout(8)(image)
        holes = out == 0
        assert torch.equal(holes[0], holes[1]) and torch.equal(holes[1], holes[2])
        rows, cols = holes[0].any(1).nonzero(), holes[0].any(0).nonzero()
        assert holes[0].sum() == len(rows) * len(cols)  # one axis-aligned rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        sizes.add((len(rows), len(cols)))
    assert (8, 8) in sizes and all(h <= 8 and w <= 8 for h, w in sizes)
    assert any(h < 8 or w < 8 for h, w in sizes)  # clipped at the border
    assert torch.equal(image, torch.ones(3, 32, 32))  # input untouched


def test_cutout_in_train_pipeline_only(cifar) -> None:
    train, test, _ = make_datasets("cifar10", cifar[0], cutout=16)
    torch.manual_seed(1)
    assert all((train[i][0] == 0).all(0).sum() >= 8 * 8 for i in range(8))  # ≥ a corner hole
    assert not (test[0][0] == 0).all(0).any()
    plain, _, _ = make_datasets("cifar10", cifar[0], cutout=16, augment=False)
    assert torch.equal(plain[0][0], make_datasets("cifar10", cifar[0], augment=False)[0][0][0])
    with pytest.raises(ValueError, match="cutout must be"):
        make_datasets("cifar10", cifar[0], cutout=-1)


# --- Tiny ImageNet and image folders --------------------------------------------------------


def test_tinyimagenet_layout(tiny: Path) -> None:
    train, test, info = make_datasets("tinyimagenet", tiny, augment=False)
    assert info == dataset_info("tinyimagenet", tiny)
    assert (info.num_classes, info.input_size, info.mean) == (3, 64, (0.485, 0.456, 0.406))
    assert info.classes == ("goldfish", "cat", "n09999999")  # sorted wnids, words.txt names
    assert (len(train), len(test)) == (6, 4)
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [2, 0, 1, 0]
    path = tiny / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG"
    with Image.open(path) as img:
        raw = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert_close(test[1][0], _normalise(raw, info))


def test_tinyimagenet_bad_files_are_named(tiny: Path) -> None:
    folder = tiny / "tiny-imagenet-200"
    broken = folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    broken.write_bytes(b"not a jpeg")
    train, _, _ = make_datasets("tinyimagenet", tiny)
    with pytest.raises(DataError, match=re.escape(f"cannot decode image {broken} (")):
        train[0]
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=re.escape("val_annotations.txt (line 1: expected")):
        make_datasets("tinyimagenet", tiny)
    (folder / "wnids.txt").unlink()
    with pytest.raises(DataError) as err:
        dataset_info("tinyimagenet", tiny)
    assert str(err.value) == (
        f"Tiny ImageNet incomplete: {folder}/wnids.txt is missing; delete {folder} and pass "
        f"--download, or unpack {data.TINY_URL} into {tiny} again"
    )


def test_imagefolder(folder: Path) -> None:
    train, test, info = make_datasets(f"imagefolder:{folder}")
    assert info == dataset_info(f"imagefolder:{folder}")
    assert (info.name, info.classes, info.input_size, info.flip) == (
        "imagefolder",
        ("cat", "dog"),
        40,
        True,
    )
    assert train.targets == [0, 0, 0, 1, 1, 1] and test.targets == [0, 1]  # test/ as fallback
    assert train[0][0].shape == test[1][0].shape == (3, 40, 40)  # 48×40 centre-cropped
    (folder / "val" / "bird").mkdir(parents=True)
    with pytest.raises(DataError, match="bird has no counterpart in train/"):
        make_datasets(f"imagefolder:{folder}")


# --- loaders --------------------------------------------------------------------------------


def _labels(loader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def test_loader_order_is_a_function_of_the_seed() -> None:
    def epoch(seed: int) -> list[int]:
        train, _, _ = make_loaders("digits", batch_size=32, seed=seed, limit=128)
        return _labels(train)

    assert epoch(3) == epoch(3) and epoch(3) != epoch(4)
    train, test, info = make_loaders("digits", batch_size=50, limit=120)
    assert len(train.dataset) == len(test.dataset) == 120 and info.num_classes == 10
    assert len(train) == 2 and len(test) == 3  # drop_last applies to train only
    _, full_test, _ = make_datasets("digits")
    assert _labels(test) == full_test.targets[:120]


def test_workers_reproduce_augmentation(cifar) -> None:
    def first_batch() -> torch.Tensor:
        train, _, _ = make_loaders("cifar10", cifar[0], batch_size=8, workers=2, seed=7, cutout=8)
        return next(iter(train))[0]

    first, second = first_batch(), first_batch()
    assert first.shape == (8, 3, 32, 32) and torch.equal(first, second)


def test_distributed_loaders(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not built into this torch")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        train, test, _ = make_loaders("digits", batch_size=16, distributed=True, limit=64)
    finally:
        dist.destroy_process_group()
    assert isinstance(train.sampler, DistributedSampler) and len(_labels(train)) == 64
    assert list(test.sampler) == list(range(64))
    shards = [index for rank in range(3) for index in data._ShardSampler(10, rank, 3)]
    assert sorted(shards) == list(range(10))  # disjoint, complete, unpadded


def test_a_train_loader_without_one_batch_is_refused(monkeypatch) -> None:
    with pytest.raises(ValueError) as error:
        make_loaders("digits", batch_size=64, limit=10)
    assert str(error.value) == (
        "the training split of digits has 10 examples (--limit 10) but a batch needs 64: "
        "incomplete batches are dropped, so not one step would run; give --batch-size 10 or "
        "less, or a larger --limit"
    )
    _, test, _ = make_loaders("digits", batch_size=64, limit=10, drop_last=False)  # eval's way
    assert len(test.dataset) == 10
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    with pytest.raises(ValueError) as error:
        data._check_a_batch("digits", 1437, 512, None, distributed=True)
    assert str(error.value) == (
        "the training split of digits has 1437 examples, 359 per process over 4 processes, but "
        "a batch needs 512: incomplete batches are dropped, so not one step would run; give "
        "--batch-size 359 or less"
    )
