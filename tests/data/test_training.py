"""Training data: exact packing, the pretraining mixture, SFT label masks, the schedule, and a model that learns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from anygpt.data.packing import collate_packed, pack_greedy
from anygpt.data.pretrain import PretrainDataModule
from anygpt.data.sft import SYSTEM, SFTDataModule, conversation_example
from anygpt.lm.schedules import WarmupCosine
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.music import EncodecMusicCodec
from anygpt.tokenizers.speech import TINY_CONFIG as SPEECH_TINY
from anygpt.tokenizers.speech import SpeechTokenizerCodec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "configs" / "data"
BACKBONE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def model():
    codecs = {"speech": SpeechTokenizerCodec(config=dict(SPEECH_TINY), checkpoint=None, decoder=None),
              "music": EncodecMusicCodec.tiny()}
    return UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs=codecs, added_tokens=["<-Res->", "<-Ins->"])


def attach(datamodule, model):
    """Give a data module the model it reads the tokenizer from, as the Trainer would."""
    datamodule.trainer = type("FakeTrainer", (), {"lightning_module": model, "current_epoch": 0})()
    return datamodule


def test_pack_greedy_keeps_order_and_never_splits():
    assert pack_greedy([3, 4, 2, 6, 1], 7) == [[0, 1], [2], [3, 4]]
    assert pack_greedy([9, 1], 5) == [[0], [1]]  # an over-long document gets a block of its own


def test_a_packed_block_gives_each_document_its_own_logits_and_losses(model):
    torch.manual_seed(0)
    docs = [(torch.randint(0, 300, (n,)).tolist(), task) for n, task in [(9, "a"), (5, "b"), (12, "a")]]
    batch = collate_packed([docs[:2], docs[2:]], task_names=["a", "b"], pad_id=0)
    assert batch["input_ids"].shape == (2, 14) and "attention_mask" not in batch
    backbone = model.backbone.eval()
    with torch.no_grad():
        packed = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = [backbone(input_ids=torch.tensor([ids])).logits[0] for ids, _ in docs]
        losses, valid = model._token_losses(batch)
    torch.testing.assert_close(packed[0, :9], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 9:14], alone[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1, :12], alone[2], atol=1e-5, rtol=1e-5)
    # every token but each document's first is a target; the padding and the boundaries are not
    assert valid.sum().item() == (9 - 1) + (5 - 1) + (12 - 1)
    own = torch.nn.functional.cross_entropy(alone[1][:-1], torch.tensor(docs[1][0][1:]), reduction="none")
    torch.testing.assert_close(losses[0, 9:13], own, atol=1e-5, rtol=1e-5)
    assert batch["token_task"][1, 12:].eq(-1).all() and batch["labels"][1, 12:].eq(-100).all()


def test_mixture_follows_weights_and_directions_and_reports_bad_lines(model):
    specs = [{"name": "captions", "files": [str(DATA / "speech_train.jsonl")], "weight": 3.0, "to_text_prob": 1.0},
             {"name": "generation", "files": [str(DATA / "music_train.jsonl")], "weight": 1.0, "to_text_prob": 0.0}]
    dm = attach(PretrainDataModule(datasets=specs, block_size=256, examples_per_epoch=400, seed=3), model)
    dm.setup("fit")
    assert {task for _, task in dm.train_sets[0]} == {"speech_to_text"}
    assert {task for _, task in dm.train_sets[1]} == {"text_to_music"}
    assert all(ids[-1] == model.tokenizer.eos_id for data in dm.train_sets for ids, _ in data)  # </s> always
    blocks = dm.train_blocks(0)
    assert blocks == dm.train_blocks(0) and blocks != dm.train_blocks(1)  # seeded per epoch
    counts = Counter(task for block in blocks for _, task in block)
    assert sum(counts.values()) == 400 and 0.65 < counts["speech_to_text"] / 400 < 0.85
    assert all(sum(len(ids) for ids, _ in block) <= 256 for block in blocks)
    bad = [p for p in dm.problems if "speech_train.jsonl" in p]
    assert any(":13:" in p and "bad JSON" in p for p in bad) and any(":14:" in p for p in bad)
    assert any("music_train.jsonl:7:" in p for p in dm.problems)


def test_conversations_join_the_mixture_with_labels_on_the_answers_only(model):
    specs = [{"name": "captions", "files": [str(DATA / "music_train.jsonl")], "to_text_prob": 1.0},
             {"name": "chat", "files": [str(DATA / "sft_train.jsonl")], "weight": 2.0}]
    dm = attach(PretrainDataModule(datasets=specs, block_size=512, examples_per_epoch=60, seed=1), model)
    dm.setup("fit")
    assert len(dm.train_sets[1]) == 10 and {ex[-1] for ex in dm.train_sets[1]} == {"chat"}
    blocks = dm.train_blocks(0)
    batch = collate_packed(blocks[:2], task_names=dm.task_names, pad_id=model.tokenizer.pad_id)
    answer_start = model.layout.token_id("[MMGPT]")
    checked = 0
    for row, block in enumerate(blocks[:2]):
        start = 0
        for doc in block:
            ids = doc[0]
            got = batch["labels"][row, start:start + len(ids)].tolist()
            if doc[-1] == "chat":  # the same mask as the SFT module's, the first token unlabelled as in packing
                record_ids, record_labels = doc[0], doc[1]
                assert got == [-100] + record_labels[1:]
                assert all(label == -100 for label in got[:record_ids.index(answer_start) + 1])
                checked += 1
            else:
                assert got == [-100] + ids[1:]
            start += len(ids)
    assert checked and Counter(ex[-1] for block in blocks for ex in block)["chat"] > 20


def test_files_read_in_forked_processes_give_the_same_examples(model):
    specs = [{"name": "mixed", "files": [str(DATA / "speech_train.jsonl"), str(DATA / "music_train.jsonl")],
              "to_text_prob": 0.5, "code_noise": 0.2},
             {"name": "chat", "files": [str(DATA / "sft_train.jsonl")]}]
    val = [{"name": "val", "files": [str(DATA / "music_val.jsonl")]}]
    alone, forked = (attach(PretrainDataModule(datasets=specs, val_datasets=val, block_size=256, seed=5,
                                               read_workers=workers), model) for workers in (0, 3))
    alone.setup("fit")
    forked.setup("fit")
    assert forked.train_sets == alone.train_sets and sum(map(len, alone.train_sets)) > 20
    assert forked.val_blocks == alone.val_blocks and forked.problems == alone.problems and alone.problems
    assert forked.train_blocks(0) == alone.train_blocks(0)


def test_code_noise_is_part_of_the_stream_a_resume_checks():
    from anygpt import AnyGPTError
    from anygpt.data.pretrain import PretrainDataModule
    from anygpt.data.resumable import StreamState

    def settings(**noise):
        return PretrainDataModule(datasets=[{"files": [str(DATA / "music_val.jsonl")], "to_text_prob": 1.0,
                                             **noise}]).stream_settings()

    assert settings()["datasets"] == [{"name": "datasets0", "weight": 1.0, "to_text_prob": 1.0}]  # as before it
    assert settings(code_noise=0.1)["datasets"][0]["code_noise"] == 0.1
    for saved, now in [({}, {"code_noise": 0.1}), ({"code_noise": 0.1}, {}), ({"code_noise": 0.1}, {"code_noise": 0.2})]:
        state = StreamState([], settings(**saved)).state_dict()
        with pytest.raises(AnyGPTError, match="data setting datasets was"):
            StreamState([], settings(**now)).load_state_dict(state)
    StreamState([], settings(code_noise=0.1)).load_state_dict(StreamState([], settings(code_noise=0.1)).state_dict())
    assert settings(text_dropout=0.1)["datasets"][0]["text_dropout"] == 0.1
    with pytest.raises(AnyGPTError, match="text_dropout in"):
        settings(text_dropout=1.0)


def test_sft_labels_cover_exactly_the_assistant_answers(model):
    tok, layout = model.tokenizer, model.layout
    eos, answer_start = layout.token_id("<eos>"), layout.token_id("[MMGPT]")
    record = {"conversation": [[
        {"role": "user", "message": "What is in the picture?"},
        {"role": "assistant", "message": "<-Ins-> a picture <-Res-> A cat on a mat."},
        {"role": "user", "message": "And the colour?"},
        {"role": "assistant", "message": "It is grey."},
    ]]}
    ids, labels = conversation_example(tok, record, eos, answer_start, max_length=4096)
    expected_ids = tok.encode(f"{SYSTEM}\n[Human]: What is in the picture?<eoh>\n[MMGPT]: <-Ins-> a picture "
                              "<-Res-> A cat on a mat.<eos>\n[Human]: And the colour?<eoh>\n[MMGPT]: It is grey.<eos>",
                              bos=True) + [tok.eos_id]
    assert ids == expected_ids
    answers = [tok.encode(": <-Ins-> a picture <-Res-> A cat on a mat.", bos=False) + [eos],
               tok.encode(": It is grey.", bos=False) + [eos]]
    labelled = [t for t in labels if t != -100]
    assert labelled == answers[0] + answers[1] + [tok.eos_id]
    assert layout.token_id("<-Res->") in labelled and layout.token_id("<-Ins->") in labelled
    first = ids.index(answer_start)  # everything up to and including the first [MMGPT] is masked
    assert all(label == -100 for label in labels[: first + 1])


def test_sft_module_reads_nested_conversations_and_skips_bad_ones(model):
    dm = attach(SFTDataModule(train_files=[str(DATA / "sft_train.jsonl")], val_files=[str(DATA / "sft_val.jsonl")]),
                model)
    dm.setup("fit")
    assert len(dm.train) == 10 and len(dm.val) == 4
    assert any("sft_train.jsonl:11:" in p and "role" in p for p in dm.problems)
    assert any("sft_train.jsonl:12:" in p and "bad JSON" in p for p in dm.problems)


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = WarmupCosine(optimizer, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(2.0)
    assert lrs[55] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5), rel=0.05) and lrs[-1] == pytest.approx(0.2, rel=0.02)


class LossLog(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_a_tiny_model_learns_the_paired_data(tmp_path):
    records = [json.loads(line) for line in (DATA / "music_val.jsonl").read_text().splitlines()]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"music": EncodecMusicCodec.tiny()},
                      optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))
    dm = PretrainDataModule(datasets=[{"files": [str(tmp_path / "train.jsonl")], "to_text_prob": 0.0}],
                            block_size=2048, batch_size=1, examples_per_epoch=3)
    log = LossLog()
    trainer = Trainer(accelerator="cpu", max_steps=60, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[log],
                      limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    start, end = sum(log.losses[:3]) / 3, sum(log.losses[-3:]) / 3
    assert len(log.losses) == 60 and end < 0.5 * start, (start, end)
