"""The front end's one error type, and how it words a cause."""

from __future__ import annotations


class TraceError(ValueError):
    """The model cannot be traced even with leaves, or does not run on the example inputs.

    The message names the model class, the submodule where it failed (if any), the reason, and
    something the user can do about it.
    """


def describe(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
