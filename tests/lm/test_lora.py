"""LoRA fine-tuning: what trains, what checkpoints hold, resuming, merging, QLoRA on int8 weights, bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from anygpt import AnyGPTError
from anygpt.cli import AnyGPTCLI, main
from anygpt.lm.lora import LoraSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/configs/fit_lora_tiny.yaml"

# The tiny twin by hand: hidden 32, MLP 64, 2 layers, rank 4 on q/k/v/o (32 -> 32) and gate/up/down (32 <-> 64).
HIDDEN, LAYERS, RANK = 32, 2, 4
ADAPTER = LAYERS * (4 * RANK * (32 + 32) + 3 * RANK * (32 + 64))  # 4352
# Rows from the text vocabulary's size on: 4 role tokens, 1024 speech codes, <sosp>/<eosp>, <-Res->/<-Ins->.
MODALITY_ROWS = 4 + 1024 + 2 + 2
TRAINED = ADAPTER + 2 * MODALITY_ROWS * HIDDEN  # 70400: adapters, embedding rows, output rows
TRAINED_KEYS = LAYERS * 7 * 2 + 2  # lora_A and lora_B of 7 projections per layer, two row blocks


class Snapshot(Callback):
    """The backbone's tensors as the fit starts (after a checkpoint is restored)."""

    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}


def _fit(tmp: Path, *extra: str) -> tuple[AnyGPTCLI, Snapshot]:
    snapshot = Snapshot()
    cli = AnyGPTCLI(args=["fit", "--config", CONFIG, "--trainer.enable_checkpointing", "true",
                          "--trainer.default_root_dir", str(tmp), *extra],
                    trainer_defaults={"callbacks": [snapshot]})
    return cli, snapshot


def _kind(key: str) -> str:
    return "adapter" if ".lora_" in key else "rows" if key.endswith(".rows") else "frozen"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        tmp = tmp_path_factory.mktemp("lora")
        cli, snapshot = _fit(tmp)
    [ckpt] = list(tmp.rglob("*.ckpt"))
    return cli, snapshot, ckpt


def test_exactly_the_adapters_and_modality_rows_train(fitted):
    cli, before, _ = fitted
    model = cli.model
    assert len(model.layout) - model.layout.base_size == MODALITY_ROWS
    trainable = {k: p for k, p in model.backbone.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == TRAINED
    assert {_kind(k) for k in trainable} == {"adapter", "rows"}
    assert cli.trainer.global_step == 4
    after = model.backbone.state_dict()
    assert set(after) == set(before.state)
    for key, value in after.items():
        if _kind(key) == "frozen":  # text rows, base projections, norms
            torch.testing.assert_close(value, before.state[key], rtol=0, atol=0, msg=key)
    for key in [k for k in after if ".lora_" in k]:
        assert not torch.equal(after[key], before.state[key]), f"{key} did not train"
    head = "base_model.model.lm_head.rows"
    assert (after[head] != before.state[head]).any(dim=1).all()  # every output row gets a gradient
    embed = "base_model.model.model.embed_tokens.rows"
    roles = [model.layout.token_id(t) - model.layout.base_size for t in ("[Human]", "[MMGPT]", "<eos>")]
    assert (after[embed][roles] != before.state[embed][roles]).any(dim=1).all()  # in every SFT example


def test_checkpoint_holds_only_the_trained_tensors(fitted):
    _, _, ckpt = fitted
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    assert len(state) == TRAINED_KEYS
    assert sum(v.numel() for v in state.values()) == TRAINED
    assert {_kind(k) for k in state} == {"adapter", "rows"}
    [optimizer] = saved["optimizer_states"]
    assert len(optimizer["state"]) == TRAINED_KEYS
    assert sum(s["exp_avg"].numel() for s in optimizer["state"].values()) == TRAINED


def test_resume_restores_the_trained_tensors_and_continues(fitted, tmp_path, monkeypatch):
    cli, before, ckpt = fitted
    monkeypatch.chdir(ROOT)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    resumed, start = _fit(tmp_path, "--ckpt_path", str(ckpt), "--trainer.max_steps", "6",
                          "--model.lr_scheduler.init_args.total_steps", "6")
    assert resumed.trainer.global_step == 6
    for key, value in start.state.items():
        expected = saved[f"backbone.{key}"] if _kind(key) != "frozen" else before.state[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    moved = [k for k, v in resumed.model.backbone.state_dict().items() if not torch.equal(v, start.state[k])]
    assert moved and {_kind(k) for k in moved} == {"adapter", "rows"}


def test_merged_backbone_gives_the_adapted_logits(fitted):
    from transformers import LlamaForCausalLM

    from anygpt.lm.unified import UnifiedLM

    _, before, ckpt = fitted
    model = UnifiedLM.load_from_checkpoint(ckpt).eval()
    base = model.layout.base_size
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    ids = torch.tensor([[1, 5, 9, base, base + 3, base + 500, len(model.layout) - 1, 40],
                        [2, base + 7, 11, 12, base + 1, 300, base + 1000, 7]])
    with torch.no_grad():
        adapted = model.backbone(input_ids=ids, use_cache=False).logits
    model.merge_adapters()
    assert type(model.backbone) is LlamaForCausalLM
    assert not [name for name, _ in model.backbone.named_modules() if "lora" in name]
    with torch.no_grad():
        merged = model.backbone(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
    embed = model.backbone.model.embed_tokens.weight
    torch.testing.assert_close(embed[:base], before.state["base_model.model.model.embed_tokens.base.weight"][:base],
                               rtol=0, atol=0)
    torch.testing.assert_close(embed[base:], saved["backbone.base_model.model.model.embed_tokens.rows"],
                               rtol=0, atol=0)


def test_qlora_trains_adapters_on_frozen_int8_weights(tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    from anygpt.lm.decoding.quantize import is_quantized

    monkeypatch.chdir(ROOT)
    cli, before = _fit(tmp_path, "--model.quantize", "int8", "--trainer.max_steps", "2",
                       "--model.lr_scheduler.init_args.total_steps", "2", "--trainer.limit_val_batches", "0")
    model = cli.model.eval()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == TRAINED
    after = model.backbone.state_dict()
    down = "base_model.model.model.layers.0.mlp.down_proj.base_layer.weight"
    assert is_quantized(after[down])
    for key, value in after.items():
        if _kind(key) == "frozen" and is_quantized(value):
            torch.testing.assert_close(value.dequantize(), before.state[key].dequantize(), rtol=0, atol=0)
    assert not torch.equal(after["base_model.model.lm_head.rows"], before.state["base_model.model.lm_head.rows"])
    ids = torch.tensor([[1, 5, 9, model.layout.base_size + 2, len(model.layout) - 1, 40]])
    with torch.no_grad():
        adapted = model.backbone(input_ids=ids, use_cache=False).logits
        model.merge_adapters()
        merged = model.backbone(input_ids=ids, use_cache=False).logits
    assert not any(is_quantized(p) for p in model.backbone.parameters())
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)


def test_bad_lora_key_is_one_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", CONFIG, "--model.lora", "{r: 4, rank: 8}"])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key 'rank'" in err and "train_token_rows" in err


@pytest.mark.parametrize("value, message", [
    ({"r": 0}, "lora.r must be a positive integer"),
    ({"dropout": 1.5}, "lora.dropout must lie in"),
    ({"target_modules": []}, "lora.target_modules"),
    ([4], "lora must be a mapping"),
])
def test_bad_lora_values_are_one_line(value, message):
    with pytest.raises(AnyGPTError, match=message) as err:
        LoraSpec.parse(value)
    assert len(str(err.value).splitlines()) == 1


def test_tied_embeddings_share_one_block_of_rows():
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.lm.lora import add_lora, merge_lora

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100, tie_word_embeddings=True)
    model = add_lora(LlamaForCausalLM(config), LoraSpec(r=RANK, dropout=0.0), start=60)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ADAPTER + 40 * HIDDEN
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 100, (2, 12))
    for _ in range(2):
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        adapted = model(input_ids=ids, use_cache=False).logits
        plain = merge_lora(model)
        merged = plain(input_ids=ids, use_cache=False).logits
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)


def test_unknown_target_module_is_one_line():
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.lm.lora import add_lora

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100)
    with pytest.raises(AnyGPTError, match="lora: ") as err:
        add_lora(LlamaForCausalLM(config), LoraSpec(target_modules=("qkv_proj",)), start=60)
    assert len(str(err.value).splitlines()) == 1


def test_without_token_rows_only_the_adapters_train():
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.lm.lora import add_lora

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100)
    model = add_lora(LlamaForCausalLM(config), LoraSpec.parse({"r": RANK, "train_token_rows": False}), start=60)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ADAPTER
    assert all(".lora_" in name for name in trainable)
