"""AnyGPT-format training pairs: malformed records are reported with file and line and skipped; batches pad right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.data.pairs import collate_examples, read_examples
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.music import EncodecMusicCodec

DATA = Path(__file__).resolve().parents[1] / "configs" / "data"


@pytest.fixture(scope="module")
def model():
    backbone = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return UnifiedLM(backbone=backbone, tokenizer="tiny", codecs={"music": EncodecMusicCodec.tiny()})


def test_malformed_records_are_counted_with_file_and_line(model):
    examples, problems = read_examples([str(DATA / "music_train.jsonl")], model.build_example, seed=42)
    assert len(examples) == 6
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["7", "8", "9", "10"]
    assert all("music_train.jsonl:" in p for p in problems)
    assert "unknown modality key 'video'" in problems[1] and "no text" in problems[2]
    assert "bad JSON" in problems[0] and "unknown token '<👀5>'" in problems[3]
    again, _ = read_examples([str(DATA / "music_train.jsonl")], model.build_example, seed=42)
    assert again == examples  # directions and instructions are seeded per file and line
    other, _ = read_examples([str(DATA / "music_train.jsonl")], model.build_example, seed=7)
    assert other != examples
    with pytest.raises(AnyGPTError, match="data file not found"):
        read_examples([str(DATA / "nope.jsonl")], model.build_example, seed=0)


def test_collate_pads_right_and_masks_labels():
    batch = collate_examples([([1, 5, 6], "a"), ([1, 7], "b")], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch["labels"].tolist() == [[1, 5, 6], [1, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["task"] == ["a", "b"]


def test_validation_loss_matches_a_direct_computation(model):
    """val/loss is the token-weighted mean next-token loss, computed independently here with the backbone."""
    examples, _ = read_examples([str(DATA / "music_val.jsonl")], model.build_example, seed=42)
    batch = collate_examples(examples, pad_id=0)
    model.eval()
    model.metrics.clear()
    model.validation_step(batch, 0)
    with torch.no_grad():
        logits = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = 0.0, 0
    for row, (ids, _) in enumerate(examples):
        log_probs = logits[row, : len(ids) - 1].log_softmax(-1)
        total -= log_probs.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        count += len(ids) - 1
    assert model.metrics["all"].compute().item() == pytest.approx(total / count, rel=1e-5)


def test_binary_shards_read_as_their_jsonl_records(tmp_path, model):
    from anygpt.data.shards import convert

    convert(DATA / "music_val.jsonl", tmp_path / "val", "bin")
    as_jsonl, _ = read_examples([str(DATA / "music_val.jsonl")], lambda record, rng: record, seed=0)
    for name in ("val", "val.bin", "val.meta.json"):
        as_binary, problems = read_examples([str(tmp_path / name)], lambda record, rng: record, seed=0)
        assert as_binary == as_jsonl and not problems
    examples, problems = read_examples([str(tmp_path / "val.bin")], model.build_example, seed=0)
    assert len(examples) == len(as_jsonl) and not problems
