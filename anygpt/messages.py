"""One-line texts for error messages: how a media source is named, and an exception's first line."""

from __future__ import annotations

import os
from typing import Any

from anygpt import AnyGPTError


def describe_source(source: Any, kind: str = "") -> str:
    """How a media source (path, bytes, PIL image, file object) is named in an error message."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{kind + ' ' if kind else ''}bytes, {len(source)} bytes>"
    if hasattr(source, "mode") and hasattr(source, "size") and hasattr(source, "getpixel"):  # a PIL image
        return f"<PIL {source.mode} image {source.size[0]}x{source.size[1]}>"
    return str(getattr(source, "name", None) or f"<{type(source).__name__} object>")


def one_line(err: BaseException, with_type: bool = False) -> str:
    """The first line of ``err`` (libsndfile's own reason where it has one), at most 200 characters.

    Args:
        err: The exception.
        with_type: Prefix the exception's type name, except for ``AnyGPTError`` (already written for users).
    """
    lines = str(getattr(err, "error_string", None) or err).strip().splitlines()
    text = " ".join(lines[0].split())[:200] if lines else type(err).__name__
    return f"{type(err).__name__}: {text}" if with_type and not isinstance(err, AnyGPTError) else text
