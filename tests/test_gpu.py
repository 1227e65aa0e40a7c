"""GPU runs of the tiny pipeline (deselected by default; `pytest -m gpu` on a CUDA machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anygpt.cli import main
from anygpt.data.requests import parse_line

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_tiny_predict_on_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["predict", "--config", str(ROOT / "configs" / "tiny.yaml"), "--trainer.accelerator", "gpu",
          "--data.init_args.requests", json.dumps(["text|music|A calm piano piece",
                                                   f"music|text|{ROOT / 'examples' / 'tone.wav'}",
                                                   "text|music|",
                                                   "text|speech|Hello there",
                                                   f"text|speech|Hello there|{ROOT / 'examples' / 'voice.wav'}",
                                                   f"speech|text|{ROOT / 'examples' / 'voice.wav'}",
                                                   "text|image|A red kite",
                                                   f"image|text|{ROOT / 'examples' / 'picture.jpg'}"])])
    lines = [json.loads(l) for l in (tmp_path / "outputs" / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert [l["status"] for l in lines] == ["ok", "ok", "error", "ok", "ok", "ok", "ok", "ok"]


def test_greedy_cpu_and_gpu_agree_on_a_tiny_model():
    from anygpt.lm.unified import UnifiedLM
    from anygpt.tokenizers.music import EncodecMusicCodec

    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=1024)
    greedy = {"music": {"do_sample": False, "max_new_tokens": 12}}
    model = UnifiedLM(backbone=backbone, tokenizer="tiny", codecs={"music": EncodecMusicCodec.tiny()},
                      generation=greedy).eval()
    request = [parse_line("text|music|A calm piano piece", 0)]
    cpu = model.predict_step(request)[0]
    gpu = model.cuda().predict_step(request)[0]
    assert cpu["status"] == gpu["status"] == "ok"
    assert cpu["codes"] == gpu["codes"]
    torch.testing.assert_close(cpu["media"], gpu["media"].cpu(), atol=1e-3, rtol=1e-3)


def test_soundstorm_fixture_on_gpu_float32():
    """The golden greedy outputs (steps=1 needs no RNG agreement) hold on CUDA in float32 too."""
    from anygpt.decoders.soundstorm import SoundStormDecoder
    from tests.conftest import fixture_path

    folder = fixture_path("soundstorm", "public")
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "other"}
    model = SoundStormDecoder(**config)
    model.load_state_dict(torch.load(folder / "state_dict.pt", weights_only=True), strict=True)
    model = model.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = torch.load(folder / "cases.pt", weights_only=True)
    logits = cases["forward_logits"]
    got = model.logits(logits["inputs"]["semantic_tokens"].cuda(), logits["inputs"]["acoustic_tokens"].cuda())
    expected = logits["expected"]["logits"].view(got.shape)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    for name in ("generate_unprompted", "generate_prompted"):
        case = cases[name]
        prompt = case["inputs"].get("prompt_tokens")
        out = model.generate(case["inputs"]["semantic_tokens"].cuda(),
                             prompt_tokens=None if prompt is None else prompt.cuda(), steps=1)
        assert torch.equal(out.cpu(), case["expected"]["steps_1"]), name


def test_cuda_graphs_give_the_eager_outputs_and_follow_dtype_changes():
    from anygpt.decoders.soundstorm import SoundStormDecoder

    model = SoundStormDecoder.tiny(seed=3).cuda()
    semantic = torch.randint(0, 1024, (2, 37), generator=torch.Generator().manual_seed(0)).cuda()
    prompt = torch.randint(0, 1024, (2, 9, 8), generator=torch.Generator().manual_seed(1)).cuda()

    def run(graphs: bool):
        model.cuda_graphs = graphs
        generator = torch.Generator(device="cuda").manual_seed(5)
        return model.generate(semantic, prompt_tokens=prompt, steps=3, generator=generator)

    eager = run(False)
    assert torch.equal(run(True), eager) and torch.equal(run(True), eager)  # capture, then replay
    assert len(model._graphs.graphs) == 1
    model.to(torch.bfloat16)  # new weights: the graphs must not replay the old ones
    assert not model._graphs.graphs
    assert torch.equal(run(True), run(False))


def test_seed_codec_on_gpu_float32_matches_cpu_and_float16_runs():
    from anygpt.tokenizers.image import SeedImageCodec

    picture = ROOT / "examples" / "picture.jpg"
    cpu = SeedImageCodec.tiny(decoder=None, dtype="float32")
    expected = cpu.encode([picture, picture])
    gpu = SeedImageCodec.tiny(decoder=None, dtype="float32").cuda()
    assert all(torch.equal(a, b) for a, b in zip(gpu.encode([picture, picture]), expected))
    half = SeedImageCodec.tiny(decoder=None).cuda()  # "auto": float16 as the original on a GPU
    codes = half.encode([picture])[0]
    assert codes.shape == (32,) and int(codes.min()) >= 0 and int(codes.max()) < 8192
    entry = half.codebook_entry(codes.unsqueeze(0).cuda())
    assert entry.shape == (1, 32) and torch.isfinite(entry.float()).all()


def test_packed_attention_runs_varlen_kernels_and_matches_sdpa(monkeypatch):
    from anygpt.data.packing import collate_packed
    from anygpt.lm import packed_attention
    from anygpt.lm.unified import UnifiedLM

    backbone = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024)
    packed = UnifiedLM(backbone=backbone, tokenizer="tiny", attn_implementation="packed").cuda().eval()
    sdpa = UnifiedLM(backbone=backbone, tokenizer="tiny", attn_implementation="sdpa").cuda().eval()
    calls = []
    real = packed_attention._kernel
    monkeypatch.setattr(packed_attention, "_kernel", lambda q, d: calls.append(d) or real(q, d))
    torch.manual_seed(0)
    docs = [(torch.randint(0, 300, (n,)).tolist(), "a") for n in (300, 120, 33, 400)]
    batch = collate_packed([docs[:3], docs[3:]], task_names=["a"])
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ours, valid = packed._token_losses(batch)
        reference, _ = sdpa._token_losses(batch)
    assert calls == [torch.bfloat16] * 2 and packed_attention._VARLEN is not None
    torch.testing.assert_close(ours[valid], reference[valid], atol=3e-2, rtol=3e-2)


def test_fit_with_packed_attention_and_compile_learns(tmp_path):
    from lightning.pytorch import Trainer

    from anygpt.data.pretrain import PretrainDataModule
    from anygpt.lm.unified import UnifiedLM, token_cross_entropy
    from anygpt.tokenizers.music import EncodecMusicCodec
    from tests.data.test_training import DATA, LossLog

    backbone = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=2048)
    model = UnifiedLM(backbone=backbone, tokenizer="tiny", codecs={"music": EncodecMusicCodec.tiny()},
                      attn_implementation="packed", compile=True, gradient_checkpointing=True,
                      optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))
    dm = PretrainDataModule(datasets=[{"files": [str(DATA / "music_val.jsonl")], "to_text_prob": 0.0}],
                            block_size=256, batch_size=2, examples_per_epoch=6)  # ~110 tokens each: 3 blocks
    log = LossLog()
    trainer = Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=40, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[log], limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert model._loss_fn is not token_cross_entropy  # the compiled one
    assert all(layer._compiled_call_impl is not None for layer in model.backbone.model.layers)
    start, end = sum(log.losses[:3]) / 3, sum(log.losses[-3:]) / 3
    assert len(log.losses) == 40 and end < 0.5 * start, (start, end)


def test_tiny_chat_on_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["predict", "--config", str(ROOT / "configs" / "chat_tiny.yaml"), "--trainer.accelerator", "gpu",
          "--trainer.callbacks+=anygpt.writers.MediaWriter", "--trainer.callbacks.output_dir", str(tmp_path)])
    lines = [json.loads(l) for l in next(tmp_path.glob("predictions*.jsonl")).read_text().splitlines()]
    assert [l["status"] for l in lines] == ["ok"] * 4 and all(l["replies"] for l in lines)


def test_fast_decode_on_gpu_matches_the_python_loop_greedy_and_is_seeded():
    from transformers import LlamaConfig, LlamaForCausalLM

    import sys

    from anygpt.lm.decoding.fast import fast_generate
    from anygpt.lm.decoding.loop import generate

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generate_speed import job, setup_vocab

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49418, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=1024)).cuda().eval()
    layout, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]
    prompts = [[1, 5, 9, 33], [1, 8], [1, 40, 41, 42, 43, 44]]

    def rows(sample: bool):
        made = [job(layout, rules, t, b, stops) for t, b in [("image", 40), ("music", 300), ("speech", 20)]]
        for preset, grammar in made:
            preset.do_sample, preset.min_new_tokens, grammar.min_new_tokens = sample, 0, 0
        return [m[0] for m in made], [m[1] for m in made]

    slow = generate(model, prompts, *rows(False), [0, 1, 2], fast=False)
    fast = generate(model, prompts, *rows(False), [0, 1, 2])  # the fast path on CUDA (crosses a cache bucket)
    assert fast == slow
    first = fast_generate(model, prompts, *rows(True), [5, 6, 7])
    alone = fast_generate(model, prompts[1:2], *[r[1:2] for r in rows(True)], [6])
    assert first[1] == alone[0] and first != fast_generate(model, prompts, *rows(True), [8, 9, 10])


@pytest.mark.parametrize("int8", [False, True])
def test_fast_decode_at_batch_1_on_gpu_matches_the_python_loop(int8):
    """Batch 1 decodes through the compiled whole layer (and, with int8 weights, torchao's int8 tensors)."""
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.lm.decoding.fast import fast_generate, release
    from anygpt.lm.decoding.loop import generate

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generate_speed import job, setup_vocab

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49418, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=1024)).cuda().eval()
    if int8:
        pytest.importorskip("torchao")
        from anygpt.lm.decoding.quantize import quantize_backbone

        quantize_backbone(model, "int8")
    layout, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]
    release()
    for target, budget in [("music", 300), ("image", 40)]:  # music crosses a cache bucket
        preset, grammar = job(layout, rules, target, budget, stops)
        preset.do_sample, preset.min_new_tokens, grammar.min_new_tokens = False, 0, 0
        slow = generate(model, [[1, 5, 9, 33]], [preset], [grammar], [0], fast=False)
        preset, grammar = job(layout, rules, target, budget, stops)
        preset.do_sample, preset.min_new_tokens, grammar.min_new_tokens = False, 0, 0
        assert fast_generate(model, [[1, 5, 9, 33]], [preset], [grammar], [0]) == slow
    release()
