"""The demo world's scenes (anygpt.demo.scenes) and the pixel judge that reads them (anygpt.demo.image_judge)."""

import numpy as np
import pytest

from anygpt import AnyGPTError


def test_plan_is_deterministic_and_holds_combinations_out():
    from anygpt.demo.scenes import COLORS, SHAPES, plan

    a, b = plan(0, {"train": 3000, "test": 300}), plan(0, {"train": 3000, "test": 300})
    assert a == b and plan(1, {"test": 300})["test"] != a["test"]

    def combination(r):
        s = r["shapes"]
        if len(s) == 1:
            return (s[0]["shape"], s[0]["color"], s[0]["size"], s[0]["position"], r["background"])
        return tuple((x["shape"], x["color"], x["position"]) for x in s)

    seen = {combination(r) for r in a["train"]}
    assert not seen & {combination(r) for r in a["test"]}
    assert {s["shape"] for r in a["train"] for s in r["shapes"]} == set(SHAPES)
    assert {s["color"] for r in a["train"] for s in r["shapes"]} == set(COLORS)
    assert {len(r["shapes"]) for r in a["test"]} == {1, 2}


def test_held_out_image_lines_are_the_shipped_ones():
    from anygpt.demo import heldout

    lines = heldout.read(modality="image")
    assert lines == heldout.image_lines(0, heldout.IMAGES)
    single = [line for line in lines if "shapes" not in line["attributes"]]
    several = [line for line in lines if "shapes" in line["attributes"]]
    assert single and several and all("color" not in line["attributes"] for line in several)
    assert all(line["attributes"]["color"] in line["text"] and line["attributes"]["shape"] in line["text"]
               for line in single)


def test_judge_reads_rendered_scenes():
    """Rendered train and held-out scenes, judged from pixels: every shape's colour, kind and place as planned."""
    from anygpt.demo.image_judge import objects
    from anygpt.demo.scenes import plan, render

    records = [r for split in plan(3, {"train": 150, "test": 150}).values() for r in split]
    right = 0
    for record in records:
        found = sorted((o["shape"], o["color"], o["position"]) for o in objects(render(record)))
        right += found == sorted((s["shape"], s["color"], s["position"]) for s in record["shapes"])
    assert right >= 0.98 * len(records)


def test_rendering_is_deterministic():
    from anygpt.demo.scenes import plan, render

    record = plan(0, {"val": 1})["val"][0]
    assert render(record).tobytes() == render(record).tobytes()
    assert render(record, 32).size == (32, 32)


@pytest.mark.parametrize("shape", ["square", "triangle", "circle", "cross"])
def test_judge_on_hand_drawn_arrays(shape):
    """Shapes drawn here with numpy masks (not by the scene renderer), as uint8 and as float [0, 1] arrays."""
    from anygpt.demo.image_judge import judge

    y, x = np.mgrid[0:64, 0:64] + 0.5
    dx, dy = x - 32, y - 32
    masks = {"square": (abs(dx) < 14) & (abs(dy) < 14), "circle": dx ** 2 + dy ** 2 < 16 ** 2,
             "triangle": (dy > -16) & (dy < 14) & (abs(dx) < (dy + 16) * 0.55),
             "cross": ((abs(dx) < 5) & (abs(dy) < 16)) | ((abs(dy) < 5) & (abs(dx) < 16))}
    picture = np.full((64, 64, 3), 245, dtype=np.uint8)
    picture[masks[shape]] = (20, 40, 230)
    assert {k: judge(picture)[k] for k in ("shape", "color", "position")} == \
        {"shape": shape, "color": "blue", "position": "center"}
    assert judge(picture.astype(np.float32) / 255)["shape"] == shape


def test_judge_of_an_empty_picture_is_none_and_bad_input_is_one_line(tmp_path):
    from anygpt.demo.image_judge import judge
    from anygpt.demo.scenes import build, render

    assert judge(np.zeros((32, 32, 3), dtype=np.uint8)) is None
    with pytest.raises(AnyGPTError, match="RGB image"):
        judge(np.zeros((32, 32)))
    with pytest.raises(AnyGPTError, match="non-finite"):
        judge(np.full((32, 32, 3), np.nan))
    with pytest.raises(AnyGPTError, match="must not be negative"):
        build(tmp_path, counts={"train": -1})
    with pytest.raises(AnyGPTError, match="unknown shape 'hexagon'"):
        render({"shapes": [{"shape": "hexagon", "color": "red", "size": "big", "position": "center"}],
                "background": "white"})
