"""UnifiedLM with the image codec: text to image and captioning, per-request seeds, bad images, span length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anygpt.data.requests import parse_line
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.image import SeedImageCodec

ROOT = Path(__file__).resolve().parents[2]
PICTURE = ROOT / "examples" / "picture.jpg"
BACKBONE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=1024)
SMALL = {"text": {"max_new_tokens": 8}, "image": {"max_new_tokens": 40}}


@pytest.fixture(scope="module")
def model():
    return UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"image": SeedImageCodec.tiny()},
                     generation=SMALL).eval()


def run(model, lines, seeds):
    batch = [parse_line(line, i) for i, line in enumerate(lines)]
    for request, seed in zip(batch, seeds):
        request.seed = seed
    return model.predict_step(batch)


def test_text_to_image_and_captioning_with_bad_images_failing_alone(model, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    lines = ["text|image|A red kite over a green hill", f"image|text|{PICTURE}",
             f"image|text|{tmp_path / 'missing.png'}", f"image|text|{tmp_path / 'empty.png'}",
             f"image|text|{tmp_path / 'broken.jpg'}", f"image|text|{tmp_path / 'dot.png'}"]
    out = run(model, lines, range(10, 16))
    assert [r["status"] for r in out] == ["ok", "ok", "error", "error", "error", "ok"], out
    for response, name in zip(out[2:5], ["missing.png", "empty.png", "broken.jpg"]):
        assert response["error"].startswith(f"request {response['index']}:") and name in response["error"]
        assert "\n" not in response["error"]
    image = out[0]["media"]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert out[0]["codes"] == 32
    assert out[1]["prompt_tokens"] > 32 and isinstance(out[1]["text"], str)


def test_an_image_depends_on_its_seed_not_on_its_batch(model):
    alone = run(model, ["text|image|A red kite"], [7])[0]["media"]
    pair = run(model, ["text|image|Something else entirely", "text|image|A red kite"], [8, 7])[1]["media"]
    assert np.array_equal(np.asarray(alone), np.asarray(pair))


def test_without_the_grammar_a_short_image_span_fails_alone(monkeypatch):
    import anygpt.lm.unified as unified

    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"image": SeedImageCodec.tiny()},
                      generation=SMALL, grammar=False)
    image = model.layout.ranges["image"]
    short = [image.bos] + [image.start + 5] * 20 + [image.eos]
    good = [image.bos] + [image.start + i for i in range(32)] + [image.eos]
    monkeypatch.setattr(unified, "generate", lambda *a, **k: [short, good])
    out = model.predict_step([parse_line(f"text|image|case {i}", i) for i in range(2)])
    assert [r["status"] for r in out] == ["error", "ok"]
    assert "20 codes is incomplete (needs exactly 32)" in out[0]["error"]
