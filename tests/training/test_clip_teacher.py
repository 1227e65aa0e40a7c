"""CLIPTeacherTrainer: a small CLIP learns to match pictures to their captions, and its exported image tower is the
teacher that CLIPImageEmbedder reads."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.training.clip_teacher import CLIPTeacherTrainer, word_ids

TINY = dict(vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "image_size": 16, "patch_size": 8},
            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            projection_dim=16, vocab_size=64, max_words=6)
COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.1, 1.0), "yellow": (1.0, 1.0, 0.1)}


def batch(names: list[str]) -> dict:
    images = torch.stack([torch.tensor(COLOURS[n]).view(3, 1, 1).expand(3, 16, 16) for n in names])
    return {"image": images.clone(), "items": [{"text": f"a {n} picture"} for n in names]}


def test_word_ids_hash_words_and_end_at_the_pooled_eos():
    ids = word_ids(["a red picture", "a red"], vocab_size=64, length=6)
    assert ids[0, 0] == ids[1, 0] == 1 and ids[0, 1] == ids[1, 1] and ids[0, 2] == ids[1, 2]  # same words, same ids
    assert ids[0, 4] == ids[1, 3] == 66 and ids[1, 4:].eq(0).all()  # EOS is the highest id, then padding
    assert word_ids(["one two three four five six"], 64, 4)[0, -1] == 66  # cut to fit, EOS kept


def test_learns_to_pick_each_pictures_own_caption():
    torch.manual_seed(0)
    teacher = CLIPTeacherTrainer(**TINY)
    optimizer = torch.optim.AdamW(teacher.parameters(), 3e-3)
    names = list(COLOURS)
    with torch.no_grad():
        _, before = teacher._loss(batch(names))
    for step in range(80):
        loss, _ = teacher._loss(batch(names[step % 4:] + names[: step % 4]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, after = teacher._loss(batch(names[::-1]))
    assert after == 1.0 and before < 1.0, (before, after)


def test_the_exported_tower_is_what_clip_image_embedder_reads(tmp_path):
    from anygpt.training.image_embedders import CLIPImageEmbedder

    torch.manual_seed(1)
    teacher = CLIPTeacherTrainer(**TINY).eval()
    teacher.export(str(tmp_path / "teacher"))
    embedder = CLIPImageEmbedder(source=str(tmp_path / "teacher"))
    images = batch(["red", "blue"])["image"]
    with torch.no_grad():
        pixels = (images - teacher.mean) / teacher.std
        expected = teacher.clip.visual_projection(teacher.clip.vision_model(pixel_values=pixels).pooler_output)
    assert embedder.dim == 16
    torch.testing.assert_close(embedder(images), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("change, match", [
    (lambda b: b["items"].pop(), "pictures but"),
    (lambda b: b["items"][0].pop("text"), "needs a caption"),
    (lambda b: b.update(image=torch.zeros(4, 3, 8, 8)), "reads 16 x 16"),
])
def test_bad_batches_are_one_line_errors(change, match):
    teacher = CLIPTeacherTrainer(**TINY)
    bad = batch(list(COLOURS))
    change(bad)
    with pytest.raises(AnyGPTError, match=match):
        teacher._loss(bad)
