"""Codecs by registered name: installed distributions offer codec classes under the entry-point group
``anygpt.codecs`` (this package registers its own there too), and a config may name one instead of its import path:

    codecs:
      speech: {class_path: speech, init_args: {...}}   # the class registered as "speech"
      audio: audio                                     # a registered codec with its default arguments

A plug-in registers its class in its ``pyproject.toml``::

    [project.entry-points."anygpt.codecs"]
    audio = "anygpt_audio:EncodecAudioCodec"

``anygpt codecs`` lists what is installed.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from anygpt import AnyGPTError

GROUP = "anygpt.codecs"


def installed_codecs() -> dict[str, EntryPoint]:
    """The registered codecs by name (``importlib.metadata`` entry points of ``GROUP``), in name order."""
    return {point.name: point for point in sorted(entry_points(group=GROUP), key=lambda p: p.name)}


def codec_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        AnyGPTError: No installed distribution registers ``name`` (one line naming the group and what is there), or
            its entry point does not load.
    """
    points = installed_codecs()
    if name not in points:
        there = ", ".join(points) or "none"
        raise AnyGPTError(f"codec {name!r} is not installed: no entry point of that name in group {GROUP!r} "
                          f"(installed: {there}); give a class path (package.module.Class) or install its plug-in")
    try:
        return points[name].load()
    except Exception as err:  # a broken plug-in: say which one
        raise AnyGPTError(f"codec {name!r} ({points[name].value}) does not load: {type(err).__name__}: {err}") from err


def describe() -> str:
    """One line per installed codec: its name, class and distribution."""
    lines = []
    for name, point in installed_codecs().items():
        dist = getattr(point, "dist", None)
        where = f"  ({dist.name} {dist.version})" if dist is not None else ""
        lines.append(f"{name:<10} {point.value}{where}")
    return "\n".join(lines) if lines else f"no codecs registered under {GROUP!r}"
