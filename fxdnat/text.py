"""Text data sets for causal language modelling, offline: byte-level tokens in fixed windows.

``text:pydoc`` is the English documentation every CPython ships (``pydoc_data.topics``: 79
topics, 466,117 bytes of UTF-8 on Python 3.11); ``text:PATH`` reads a UTF-8 file or every text
file under a folder. A token is one byte (vocabulary 256: no tokenizer to download). The split is
fixed whatever the run's seed: documents (topics, files) are shuffled by seed 0 and taken into the
validation split until it holds a tenth of the bytes; a single document is split at 90 % of its
bytes. Each split is one stream of its documents joined by a blank line, cut into non-overlapping
windows of ``context + 1`` tokens that overlap by one: a window gives ``x = tokens[:-1]`` and
``y = tokens[1:]``, both (context,) int64, so an epoch predicts every token of the split once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

VOCAB_SIZE = 256  # bytes
CONTEXT = 128  # tokens a window feeds the network; the model's position table has as many
VALIDATION_FRACTION = 0.1  # of the bytes
SPLIT_SEED = 0  # one split for every run
SEPARATOR = b"\n\n"  # between two documents of a split's stream
PYDOC = "pydoc"  # text:pydoc, the documentation shipped with Python
SUFFIXES = (".txt", ".md", ".rst", ".text", ".markdown", ".tex", ".py", ".csv", ".json", ".html")


class TextError(ValueError):
    """Text that cannot be a data set; the message says what to do (fxdnat.data raises it as
    a DataError)."""


@dataclass(frozen=True)
class TextInfo:
    """A text data set: its name, the vocabulary of its tokens and the context of a window."""

    name: str  # "text:pydoc" or "text:/absolute/path"
    vocab_size: int = VOCAB_SIZE
    context: int = CONTEXT


class Windows(Dataset):
    """Non-overlapping windows of a token stream: item i is (x, y) = (tokens[iT : iT + T],
    tokens[iT + 1 : iT + T + 1]) for T = ``context``, each (T,) int64."""

    def __init__(self, tokens: Tensor, context: int) -> None:
        self.tokens, self.context = tokens, context

    def __len__(self) -> int:
        return max((len(self.tokens) - 1) // self.context, 0)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start = index * self.context
        chunk = self.tokens[start : start + self.context + 1].long()
        return chunk[:-1], chunk[1:]


def documents(source: str) -> dict[str, bytes]:
    """The documents of ``source`` ("pydoc" or a path), by name, as UTF-8 bytes.

    Raises:
        TextError: a path that does not exist, holds no text file, holds an empty one, or one
            that is not UTF-8 (named, with what to do).
    """
    if source == PYDOC:
        from pydoc_data.topics import topics  # the standard library's own help text

        return {key: text.encode("utf-8") for key, text in topics.items()}
    path = Path(source)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise TextError(
                f"no text files under {path} (looked for {', '.join(SUFFIXES)}); put UTF-8 text "
                "files there or give one file as text:FILE"
            )
    else:
        raise TextError(f"no file or folder at {path}; give text:FILE or text:FOLDER of UTF-8 text")
    return {str(f.relative_to(path) if f != path else f.name): _read(f) for f in files}


def _read(file: Path) -> bytes:
    data = file.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(
            f"{file} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it with "
            "`iconv -t utf-8` or leave it out of the folder"
        ) from exc
    if not data.strip():
        raise TextError(f"{file} is empty; give a file with text in it or leave it out")
    return data


def split(docs: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """(train, validation) document names: shuffled by :data:`SPLIT_SEED`, validation taking
    documents until it holds :data:`VALIDATION_FRACTION` of the bytes. A single document (or a
    split that would leave train empty) gives ([], []): split its bytes instead."""
    names = sorted(docs)
    random.Random(SPLIT_SEED).shuffle(names)
    target = VALIDATION_FRACTION * sum(len(d) for d in docs.values())
    validation, held = [], 0
    for name in names:
        if held >= target:
            break
        validation.append(name)
        held += len(docs[name])
    train = [n for n in names if n not in validation]
    if not train or len(docs) < 2:
        return [], []
    return sorted(train), sorted(validation)


def streams(docs: dict[str, bytes]) -> tuple[bytes, bytes]:
    """The train and validation streams: each split's documents in name order, joined by
    :data:`SEPARATOR`; a single document is cut at 90 % of its bytes."""
    train, validation = split(docs)
    if not train:
        data = SEPARATOR.join(docs[n] for n in sorted(docs))
        cut = round(len(data) * (1 - VALIDATION_FRACTION))
        return data[:cut], data[cut:]
    return (SEPARATOR.join(docs[n] for n in train), SEPARATOR.join(docs[n] for n in validation))


def load(source: str, name: str, context: int = CONTEXT) -> tuple[TextInfo, Windows, Windows]:
    """The train and validation windows of ``source`` ("pydoc" or a path) for ``context``.

    Raises:
        TextError: unreadable text (see :func:`documents`), or a split shorter than one window.
    """
    train, validation = streams(documents(source))
    for split_name, stream in (("training", train), ("validation", validation)):
        if len(stream) < context + 1:
            raise TextError(
                f"{name}: the {split_name} split has {len(stream)} bytes but one window needs "
                f"{context + 1}; give at least {round((context + 1) / VALIDATION_FRACTION)} "
                "bytes of text"
            )
    info = TextInfo(name, VOCAB_SIZE, context)
    return info, Windows(_tokens(train), context), Windows(_tokens(validation), context)


def _tokens(stream: bytes) -> Tensor:
    """A byte stream as uint8 token ids (1-D); windows widen them to int64."""
    return torch.frombuffer(bytearray(stream), dtype=torch.uint8)
