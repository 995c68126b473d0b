"""Data sets (digits, CIFAR-10, Tiny ImageNet, image folders) read from their on-disk formats;
text for language models (``text:pydoc``, ``text:PATH``) is fxdnat/text.py's."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from fxdnat import text
from fxdnat.text import TextInfo

logger = logging.getLogger(__name__)

NAMES = (
    "digits",
    "digits-hard",
    "cifar10",
    "tinyimagenet",
    "imagefolder:PATH",
    "text:pydoc",
    "text:PATH",
)
_WITH_PATH = ("imagefolder", "text")  # kinds that name a path (text: also the built-in pydoc)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

# Tiny ImageNet and arbitrary image folders are ImageNet crops, so they use the ImageNet
# statistics (torchvision's reference recipes) instead of statistics of their own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CIFAR_DIR = "cifar-10-batches-py"
_TINY_DIR = "tiny-imagenet-200"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Missing or corrupt data: the message says where fxdnat looked and how to get the data."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # "digits", "cifar10", "tinyimagenet", "imagefolder"
    num_classes: int
    input_size: int  # side in pixels of the (square) network input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool  # a horizontal flip is label-preserving (not for digits: a flipped 2 is no 2)
    classes: tuple[str, ...]


# Computed by `tests/fxdnat/test_data.py::test_digits_stats_match_train_split`: mean and
# population std over every pixel of the 1,437 train images (0..1, bilinear 8→32 px).
DIGITS = DatasetInfo(
    "digits", 10, 32, (0.3054,) * 3, (0.3237,) * 3, False, tuple(str(d) for d in range(10))
)
# Computed by `tests/fxdnat/test_data.py::test_digits_hard_stats_match_train_split`: over every
# pixel of the 250 (noisy, native 8×8) train images.
DIGITS_HARD = DatasetInfo(
    "digits-hard", 10, 8, (0.3076,) * 3, (0.4499,) * 3, False, tuple(str(d) for d in range(10))
)
DIGITS_HARD_PER_CLASS = 25  # training images per class; every other image is a test image
DIGITS_HARD_NOISE = 0.25  # std of the additive Gaussian noise, in units of the 0..1 pixel range
CIFAR10 = DatasetInfo(
    "cifar10",
    10,
    32,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
    True,
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)


def _parse(name: str) -> tuple[str, Path | None]:
    """Split a data set name into its kind and, for `imagefolder:PATH` and `text:PATH`, the path
    (None for the built-in `text:pydoc`)."""
    kind, sep, path = name.partition(":")
    if kind in _WITH_PATH:
        if not sep or not path:
            example = "text:pydoc' or 'text:PATH" if kind == "text" else "imagefolder:PATH"
            raise ValueError(f"data set {kind!r} needs a path: use '{example}'")
        if kind == "text" and path == "pydoc":  # a folder named pydoc: text:./pydoc
            return kind, None
        return kind, Path(path).expanduser()
    if sep or kind not in NAMES:
        close = difflib.get_close_matches(name.lower(), [n.split(":")[0] for n in NAMES], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown data set {name!r}; {hint}accepted: {', '.join(NAMES)}")
    return kind, None


def resolve_name(name: str) -> str:
    """``name`` as a run stores it: ``imagefolder:PATH`` and ``text:PATH`` with PATH absolute,
    so that the stored name finds the data from any working folder; other names as they are
    (checked)."""
    kind, path = _parse(name)
    return name if path is None else f"{kind}:{path.resolve()}"


def _root(data_dir: str | Path | None) -> Path:
    default = os.environ.get("FXDNAT_DATA") or "~/.cache/fxdnat/data"
    return Path(data_dir if data_dir is not None else default).expanduser()


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo | TextInfo:
    """Describe a data set; Tiny ImageNet and image folders read their class lists from disk.
    A text data set is described by its vocabulary and context (fxdnat.text.TextInfo)."""
    kind, path = _parse(name)
    if kind == "text":
        return TextInfo(resolve_name(name))
    if kind == "digits":
        return DIGITS
    if kind == "digits-hard":
        return DIGITS_HARD
    if kind == "cifar10":
        return CIFAR10
    if kind == "tinyimagenet":
        return _tiny_info(_root(data_dir) / _TINY_DIR)
    return _folder_info(path)


# --- in-memory and on-disk image datasets --------------------------------------------------


class _TensorImages(Dataset):
    """Images held in memory (uint8 or float, N×3×H×W) with integer labels."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.targets = images, labels.tolist()
        self.transform: Callable[[Tensor], Tensor] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


class _FileImages(Dataset):
    """Image files decoded lazily with PIL, resized (shorter side) and centre-cropped to `size`."""

    def __init__(self, samples: list[tuple[Path, int]], size: int) -> None:
        self.samples, self.size = samples, size
        self.targets = [label for _, label in samples]
        self.transform: Callable[[Tensor], Tensor] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        image = _read_image(path, self.size)
        return (self.transform(image) if self.transform else image), label


def _read_image(path: Path, size: int | None = None) -> Tensor:
    from PIL import Image  # lazy: only image folders need PIL and torchvision's transforms
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as img:
            image = F.pil_to_tensor(img.convert("RGB"))  # uint8 3×H×W
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"cannot decode image {path} ({exc}); replace or delete it") from exc
    if size is not None and image.shape[-2:] != (size, size):
        image = F.center_crop(F.resize(image, size, antialias=True), [size, size])
    return image


# --- digits ---------------------------------------------------------------------------------


def _load_digits() -> tuple[DatasetInfo, Dataset, Dataset]:
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second to import
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # N×1×8×8 in 0..1
    images = torch.nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1).contiguous()  # N×3×32×32: the models expect RGB
    labels = torch.from_numpy(digits.target)
    # Seed 0 whatever the run seed: every run must evaluate on the same 360 images.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=360, stratify=digits.target, random_state=0
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return (
        DIGITS,
        _TensorImages(images[train_idx], labels[train_idx]),
        _TensorImages(images[test_idx], labels[test_idx]),
    )


def _load_digits_hard() -> tuple[DatasetInfo, Dataset, Dataset]:
    """A digits benchmark that is not saturated (original ResNet20 near 99 % on ``digits``):
    the native 8×8 images, 25 training images per class (250; the rest, 1,547, are the test
    set, so a test accuracy resolves 0.07 points), and fixed additive Gaussian noise (σ 0.25
    of the pixel range, drawn once from seed 0, the same in every run) on both splits."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second to import

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # N×1×8×8 in 0..1
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    images = (images + DIGITS_HARD_NOISE * noise).repeat(1, 3, 1, 1).contiguous()
    labels = torch.from_numpy(digits.target)
    rng = np.random.default_rng(0)  # seed 0 whatever the run seed: one split for every run
    train_idx = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(digits.target == c), DIGITS_HARD_PER_CLASS, False)
                for c in range(10)
            ]
        )
    )
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (
        DIGITS_HARD,
        _TensorImages(images[train_idx], labels[train_idx]),
        _TensorImages(images[test_idx], labels[test_idx]),
    )


# --- CIFAR-10 -------------------------------------------------------------------------------


def _numpy_global(module: str, name: str) -> Any:
    """Resolve `numpy.core.X` (NumPy 1 pickles) and `numpy._core.X` (NumPy 2) to the same object."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else, so a file can never run code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return super().find_class(module, name)
        return _numpy_global(module.rpartition(".")[2], name)


_CIFAR_HINT = f"pass --download to fetch it, or place torchvision's {_CIFAR_DIR} there"


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file missing: {path}; {_CIFAR_HINT}")
    try:
        with path.open("rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any parse failure (truncation, foreign globals) means corrupt
        raise DataError(
            f"corrupt CIFAR-10 file {path} ({exc}); delete {path.parent} and pass --download"
        ) from exc


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One batch file → uint8 N×3×32×32 images and int64 N labels."""
    entry = _unpickle(path)
    data = entry.get(b"data") if isinstance(entry, dict) else None
    labels = entry.get(b"labels") if isinstance(entry, dict) else None
    problem = None
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        problem = "b'data' is not a uint8 N×3072 array"
    elif not isinstance(labels, list) or len(labels) != len(data):
        problem = f"b'labels' is not a list of {len(data)} labels"
    elif not all(isinstance(y, int) and 0 <= y < 10 for y in labels):
        problem = "b'labels' holds values outside 0..9"
    if problem:
        raise DataError(f"corrupt CIFAR-10 file {path} ({problem}); delete it and pass --download")
    # Rows store the 1024 R, then G, then B values of a 32×32 image in row-major order.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.tensor(labels)


def _load_cifar(root: Path) -> tuple[DatasetInfo, Dataset, Dataset]:
    folder = root / _CIFAR_DIR
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 not found at {folder}; {_CIFAR_HINT}")
    meta = _unpickle(folder / "batches.meta")
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == 10):
        raise DataError(f"corrupt CIFAR-10 file {folder / 'batches.meta'} (no 10 label_names)")
    batches = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    train = _TensorImages(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    logger.info("CIFAR-10 from %s: %d train / %d test", folder, len(train), len(test_y))
    return replace(CIFAR10, classes=classes), train, _TensorImages(test_x, test_y)


# --- Tiny ImageNet --------------------------------------------------------------------------


def _tiny_require(path: Path, folder: Path) -> Path:
    if not folder.is_dir():
        raise DataError(
            f"Tiny ImageNet not found at {folder}; pass --download to fetch it, "
            f"or unpack {TINY_URL} into {folder.parent}"
        )
    if not path.exists():
        raise DataError(
            f"Tiny ImageNet incomplete: {path} is missing; delete {folder} and pass --download, "
            f"or unpack {TINY_URL} into {folder.parent} again"
        )
    return path


def _tiny_wnids(folder: Path) -> list[str]:
    text = _tiny_require(folder / "wnids.txt", folder).read_text()
    # Class index = position in sorted order, like torchvision's ImageFolder on train/.
    return sorted({line.strip() for line in text.splitlines() if line.strip()})


def _tiny_info(folder: Path) -> DatasetInfo:
    wnids = _tiny_wnids(folder)
    words_file = folder / "words.txt"
    words: dict[str, str] = {}
    if words_file.is_file():  # optional: human-readable names ("goldfish, Carassius auratus")
        for line in words_file.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    classes = tuple(words.get(w) or w for w in wnids)
    return DatasetInfo("tinyimagenet", len(wnids), 64, IMAGENET_MEAN, IMAGENET_STD, True, classes)


def _tiny_val(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = _tiny_require(folder / "val" / "val_annotations.txt", folder)
    samples = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise DataError(
                f"corrupt Tiny ImageNet file {annotations} (line {number}: expected "
                f"'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with a wnid from wnids.txt)"
            )
        image = _tiny_require(folder / "val" / "images" / fields[0].strip(), folder)
        samples.append((image, index[fields[1].strip()]))
    return samples


def _load_tiny(root: Path) -> tuple[DatasetInfo, Dataset, Dataset]:
    folder = root / _TINY_DIR
    info = _tiny_info(folder)
    index = {wnid: i for i, wnid in enumerate(_tiny_wnids(folder))}
    train = [
        (image, label)
        for wnid, label in index.items()
        for image in sorted(_tiny_require(folder / "train" / wnid / "images", folder).iterdir())
        if image.suffix == ".JPEG"
    ]
    test = _tiny_val(folder, index)
    logger.info("Tiny ImageNet from %s: %d train / %d val", folder, len(train), len(test))
    return info, _FileImages(train, 64), _FileImages(test, 64)


# --- image folders --------------------------------------------------------------------------


def _folder_splits(path: Path) -> tuple[Path, Path]:
    train = path / "train"
    test = path / "val" if (path / "val").is_dir() else path / "test"
    if not train.is_dir() or not test.is_dir():
        raise DataError(
            f"image folder not found at {path}: expected {train} and {path / 'val'} (or "
            f"{path / 'test'}) holding one sub-folder of images per class (ImageFolder layout)"
        )
    return train, test


def _scan(split: Path, classes: list[str]) -> list[tuple[Path, int]]:
    unknown = sorted({d.name for d in split.iterdir() if d.is_dir()} - set(classes))
    if unknown:
        raise DataError(f"class folder {split / unknown[0]} has no counterpart in train/")
    return [
        (file, label)
        for label, name in enumerate(classes)
        if (split / name).is_dir()
        for file in sorted((split / name).iterdir())
        if file.suffix.lower() in _IMAGE_SUFFIXES
    ]


def _folder_info(path: Path) -> DatasetInfo:
    train, _ = _folder_splits(path)
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    first = _scan(train, classes)[:1]
    if not first:
        raise DataError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {train}")
    size = min(_read_image(first[0][0]).shape[-2:])  # the first image fixes the input side
    return DatasetInfo(
        "imagefolder", len(classes), size, IMAGENET_MEAN, IMAGENET_STD, True, tuple(classes)
    )


def _load_folder(path: Path) -> tuple[DatasetInfo, Dataset, Dataset]:
    info = _folder_info(path)
    train, test = _folder_splits(path)
    classes = list(info.classes)
    train_set, test_set = _scan(train, classes), _scan(test, classes)
    logger.info("image folder %s: %d train / %d test", path, len(train_set), len(test_set))
    return info, _FileImages(train_set, info.input_size), _FileImages(test_set, info.input_size)


# --- downloads ------------------------------------------------------------------------------


def _download(what: str, url: str, md5: str, root: Path, target: Path) -> None:
    """Fetch and unpack an archive unless `target` exists; any failure is a one-line DataError."""
    if target.exists():
        return
    from torchvision.datasets.utils import download_and_extract_archive  # lazy: --download only

    logger.info("downloading %s from %s to %s", what, url, root)
    try:
        download_and_extract_archive(url, download_root=root, md5=md5, remove_finished=True)
    except Exception as exc:  # offline, HTTP errors, md5 mismatch, bad archive: all the same fix
        raise DataError(
            f"downloading {what} from {url} failed ({exc}); download it elsewhere and unpack "
            f"it so that {target} exists"
        ) from exc


# --- augmentation ---------------------------------------------------------------------------


class Cutout:
    """Zero one `length`×`length` square (DeVries & Taylor 2017; the DARTS reference recipe).

    The centre is uniform over the whole image and the hole is clipped at the border, so holes
    near an edge are smaller. Applied after normalisation, so the hole is the data set mean.
    """

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))  # torch RNG: worker-seeded
        top, left = y - self.length // 2, x - self.length // 2  # even sides: as in DARTS
        image = image.clone()  # never write into a tensor the dataset still holds
        image[..., max(0, top) : top + self.length, max(0, left) : left + self.length] = 0
        return image


def _transform(info: DatasetInfo, *, train: bool, cutout: int) -> Callable[[Tensor], Tensor]:
    from torchvision.transforms import v2  # lazy: a slow import

    steps: list[Callable[[Tensor], Tensor]] = []
    if train:
        steps.append(v2.RandomCrop(info.input_size, padding=info.input_size // 8))
        if info.flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    if train and cutout:
        steps.append(Cutout(cutout))
    return v2.Compose(steps)


# --- public entry points --------------------------------------------------------------------


def make_datasets(
    name: str,
    data_dir: str | Path | None = None,
    *,
    augment: bool = True,
    cutout: int = 0,
    download: bool = False,
) -> tuple[Dataset, Dataset, DatasetInfo | TextInfo]:
    """Train and test datasets yielding (normalised float 3×S×S image, int label); for a text
    data set (windows of int64 tokens (T,), next tokens (T,)) and its TextInfo
    (fxdnat/text.py; ``augment``, ``cutout`` and ``download`` do not apply to text)."""
    if cutout < 0:
        raise ValueError(f"cutout must be a hole side >= 0 pixels (0 = off), got {cutout}")
    kind, path = _parse(name)
    if kind == "text":
        try:
            info, train, test = text.load(
                text.PYDOC if path is None else str(path), resolve_name(name)
            )
        except text.TextError as exc:
            raise DataError(str(exc)) from exc
        return train, test, info
    root = _root(data_dir)
    if kind == "digits":
        info, train, test = _load_digits()
    elif kind == "digits-hard":
        info, train, test = _load_digits_hard()
    elif kind == "cifar10":
        if download:
            _download("CIFAR-10", CIFAR10_URL, CIFAR10_MD5, root, root / _CIFAR_DIR)
        info, train, test = _load_cifar(root)
    elif kind == "tinyimagenet":
        if download:
            _download("Tiny ImageNet", TINY_URL, TINY_MD5, root, root / _TINY_DIR)
        info, train, test = _load_tiny(root)
    else:
        info, train, test = _load_folder(path)
    train.transform = _transform(info, train=augment, cutout=cutout if augment else 0)
    test.transform = _transform(info, train=False, cutout=0)
    return train, test, info


class _ShardSampler(Sampler[int]):
    """Rank r of w evaluates indices r, r+w, ...: no padding, so summed counts are exact."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    # DataLoader already seeds torch per worker from the loader's generator; numpy and random
    # follow it so that any third-party augmentation is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _check_a_batch(
    name: str, examples: int, batch_size: int, limit: int | None, distributed: bool
) -> None:
    """Refuse a train loader without a single full batch: with incomplete batches dropped, a
    run on it would take no step and still report a trained network."""
    world = 1
    if distributed:
        world = dist.get_world_size()
    each = examples // world  # DistributedSampler(drop_last=True) gives every rank this many
    if each >= batch_size:
        return
    limited = f" (--limit {limit})" if limit is not None and limit <= examples else ""
    ranks = f", {each} per process over {world} processes," if world > 1 else ""
    more = ", or a larger --limit" if limited else ""
    raise ValueError(
        f"the training split of {name} has {examples} examples{limited}{ranks} but a batch "
        f"needs {batch_size}: incomplete batches are dropped, so not one step would run; "
        f"give --batch-size {max(each, 1)} or less{more}"
    )


def make_loaders(
    name: str,
    data_dir: str | Path | None = None,
    *,
    batch_size: int,
    cutout: int = 0,
    download: bool = False,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    pin_memory: bool = False,
    drop_last: bool = True,
    limit: int | None = None,
) -> tuple[DataLoader, DataLoader, DatasetInfo | TextInfo]:
    """Augmented, shuffled train loader and ordered test loader for one data set.

    The train order is a function of `seed` (and, with workers=0, augmentation draws from the
    global torch RNG: seed it). With `distributed`, the train loader uses a DistributedSampler
    whose `set_epoch(epoch)` the caller must call every epoch, or every epoch repeats one order;
    the test loader gives each rank a disjoint, unpadded shard. `drop_last` applies to train only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    train, test, info = make_datasets(name, data_dir, cutout=cutout, download=download)
    if limit is not None:
        train, test = (Subset(ds, range(min(limit, len(ds)))) for ds in (train, test))
    if drop_last:
        _check_a_batch(name, len(train), batch_size, limit, distributed)
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        # Workers start afresh each epoch, seeded from the loader's generator: a trainer that
        # reseeds the generator per epoch gets the same augmentation when it resumes mid-run.
        persistent_workers=False,
        worker_init_fn=seed_worker,
    )
    train_sampler = test_sampler = None
    if distributed:
        train_sampler = DistributedSampler(train, shuffle=True, seed=seed, drop_last=drop_last)
        test_sampler = _ShardSampler(len(test), dist.get_rank(), dist.get_world_size())
    train_loader = DataLoader(
        train,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    test_loader = DataLoader(test, shuffle=False, sampler=test_sampler, **common)
    return train_loader, test_loader, info
