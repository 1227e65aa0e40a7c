"""Whether an output of the demo model is right about a held-out item, by the world's own analysers.

A picture is right when ``anygpt.demo.image_judge`` finds exactly the scene's shapes (each colour with its shape,
none missing, none extra); a melody when ``anygpt.demo.music_judge`` hears its tempo within 10 % and its key and
mode; a caption or a reply when it names every word its item asks for (:func:`names_all`). The benchmarks and the
evaluation protocols of the demo world (``configs/eval/demo_*.yaml``) judge with these.
"""

from __future__ import annotations

import numpy as np

from anygpt.demo.conversations import names_all

TEMPO_TOLERANCE = 0.1

__all__ = ["names_all", "scene_right", "scene_words", "melody_right", "melody_words", "caption_words"]


def scene_shapes(attributes: dict) -> list[dict]:
    """The shapes of a held-out scene's attributes (one-shape scenes carry theirs at the top level)."""
    return attributes.get("shapes") or [{"color": attributes["color"], "shape": attributes["shape"]}]


def scene_right(picture, attributes: dict) -> bool:
    """Whether the analyser finds exactly the scene's (colour, shape) pairs in ``picture`` (a PIL image, array or
    the objects ``image_judge.objects`` already found)."""
    from anygpt.demo.image_judge import objects

    found = picture if isinstance(picture, list) else objects(picture)
    wanted = scene_shapes(attributes)
    return sorted((o["color"], o["shape"]) for o in found) == sorted((s["color"], s["shape"]) for s in wanted)


def scene_words(attributes: dict) -> list[str]:
    """What a caption of the scene must name: every shape's colour and shape."""
    return [word for s in scene_shapes(attributes) for word in (s["color"], s["shape"])]


def melody_right(wave, attributes: dict, sample_rate: int = 16000) -> dict[str, bool]:
    """Whether the tracker hears the melody's tempo (within ``TEMPO_TOLERANCE``) and its key and mode in ``wave``:
    ``{"tempo", "key", "both"}``."""
    from anygpt.demo.music_judge import judge

    found = judge(np.asarray(wave, dtype=np.float32).reshape(-1), sample_rate)
    tempo = found["tempo"] is not None and \
        abs(found["tempo"] - attributes["tempo"]) <= TEMPO_TOLERANCE * attributes["tempo"]
    key = (found["key"], found["mode"]) == (attributes["key"], attributes["mode"])
    return {"tempo": tempo, "key": key, "both": tempo and key}


def melody_words(attributes: dict) -> list[str]:
    """What a caption of the melody must name: its instrument, tempo class and mode."""
    return [attributes[k] for k in ("instrument", "tempo_class", "mode")]


def caption_words(line: dict) -> list[str]:
    """What a caption of a held-out line (``modality`` image or music) must name."""
    return (scene_words if line["modality"] == "image" else melody_words)(line["attributes"])
