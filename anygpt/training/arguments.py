"""Checks of the nested argument dicts that trainer configs pass on to the classes they build."""

from __future__ import annotations

import inspect
from typing import Any

from anygpt import AnyGPTError


def check_keys(section: str, spec: Any, *functions) -> dict:
    """``spec`` as a dict, checked to name only parameters of ``functions``.

    Raises:
        AnyGPTError: ``spec`` is not a mapping, or names an unknown key (the message lists the known ones).
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise AnyGPTError(f"model.init_args.{section} must be a mapping of arguments, got {type(spec).__name__}")
    known = {name for fn in functions for name, p in inspect.signature(fn).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "cls"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise AnyGPTError(f"model.init_args.{section}: unknown key {unknown[0]!r}; known keys: "
                          f"{', '.join(sorted(known))}")
    return dict(spec)
