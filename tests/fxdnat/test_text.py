"""Text data sets: the pydoc corpus's fixed split, text:PATH files and folders, their errors."""

from __future__ import annotations

import pytest
import torch

from fxdnat import text
from fxdnat.data import NAMES, DataError, dataset_info, make_loaders, resolve_name


def test_pydoc_split_is_fixed_disjoint_and_a_tenth():
    docs = text.documents("pydoc")
    train, validation = text.split(docs)
    assert (train, validation) == text.split(dict(reversed(list(docs.items()))))  # any order
    assert set(train).isdisjoint(validation) and set(train) | set(validation) == set(docs)
    held = sum(len(docs[n]) for n in validation) / sum(len(d) for d in docs.values())
    assert 0.1 <= held < 0.25


def test_pydoc_windows_are_next_token_pairs():
    info, train, validation = text.load("pydoc", "text:pydoc")
    assert (info.vocab_size, info.context) == (256, 128)
    a, b = text.streams(text.documents("pydoc"))
    assert len(train) == (len(a) - 1) // 128 and len(validation) == (len(b) - 1) // 128
    x, y = train[3]
    assert x.shape == y.shape == (128,) and x.dtype == y.dtype == torch.int64
    torch.testing.assert_close(x[1:], y[:-1])
    assert bytes(x.tolist()) == a[3 * 128 : 4 * 128]  # windows start every `context` bytes
    assert bytes(train[4][0][:1].tolist()) == bytes(y[-1:].tolist())  # and overlap by one


def test_a_file_is_split_at_nine_tenths_and_a_folder_by_files(tmp_path):
    (tmp_path / "one.txt").write_text("abcdefghij" * 100)
    _, train, validation = text.load(str(tmp_path / "one.txt"), "t", context=8)
    assert (len(train), len(validation)) == ((900 - 1) // 8, (100 - 1) // 8)
    folder = tmp_path / "corpus"
    for i in range(10):
        (folder / f"part{i // 5}").mkdir(parents=True, exist_ok=True)
        (folder / f"part{i // 5}" / f"{i}.md").write_text(f"document {i} " * 40)
    (folder / "image.png").write_bytes(b"\x89PNG not text")  # only text suffixes are read
    docs = text.documents(str(folder))
    assert sorted(docs) == sorted(f"part{i // 5}/{i}.md" for i in range(10))
    train, validation = text.split(docs)
    assert len(validation) == 1 and len(train) == 9


def test_text_names_resolve_to_absolute_paths_and_are_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"text:pydoc", "text:PATH"} <= set(NAMES)
    assert resolve_name("text:pydoc") == "text:pydoc"
    assert resolve_name("text:notes") == f"text:{tmp_path / 'notes'}"
    assert dataset_info("text:pydoc").context == 128


def test_loaders_honour_limit_and_batch():
    train, test, info = make_loaders("text:pydoc", batch_size=4, limit=10)
    assert len(train.dataset) == len(test.dataset) == 10 and info.vocab_size == 256
    x, y = next(iter(train))
    assert x.shape == y.shape == (4, 128) and x.dtype == torch.int64


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda p: p / "missing",
            "no file or folder at {p}/missing; give text:FILE or text:FOLDER",
        ),
        (lambda p: _folder(p, {"a.bin": b"x"}), "no text files under {p}/d (looked for .txt"),
        (lambda p: _folder(p, {"a.txt": b"  \n"}), "{p}/d/a.txt is empty"),
        (lambda p: _folder(p, {"a.txt": b"ok \xff"}), "{p}/d/a.txt is not UTF-8 text (byte 3"),
        (
            lambda p: _folder(p, {"a.txt": b"short"}),
            "the training split has 4 bytes but one window",
        ),
    ],
)
def test_unreadable_text_is_one_data_error_saying_what_to_do(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        make_loaders(f"text:{path}", batch_size=1)
    assert message.format(p=tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_a_text_name_without_a_path_is_refused():
    with pytest.raises(ValueError, match="data set 'text' needs a path: use 'text:pydoc'"):
        resolve_name("text")


def _folder(tmp_path, files: dict[str, bytes]):
    folder = tmp_path / "d"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
