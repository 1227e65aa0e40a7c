"""UnifiedLM: vocabulary composition, predict with bad requests, released-layout loading, training examples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import soundfile
import torch

from anygpt import AnyGPTError
from anygpt.data.requests import parse_line
from anygpt.lm.tokenizer import TextTokenizer
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.vocab import SPECIALS, VocabLayout
from anygpt.tokenizers.music import EncodecMusicCodec
from tests.toy_codec import ToyCodec

ROOT = Path(__file__).resolve().parents[2]
TONE = ROOT / "examples" / "tone.wav"
BACKBONE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=1024)
SMALL = {"text": {"max_new_tokens": 8}, "music": {"max_new_tokens": 24}, "toy": {"max_new_tokens": 8}}


@pytest.fixture(scope="module")
def music_codec():
    return EncodecMusicCodec.tiny(segment_seconds=0.5)


@pytest.fixture(scope="module")
def model(music_codec):
    return UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"music": music_codec, "toy": ToyCodec()},
                     generation=SMALL).eval()


def test_codecs_get_consecutive_ranges_after_the_specials(model):
    base = len(TextTokenizer.tiny())
    music, toy = model.layout.ranges["music"], model.layout.ranges["toy"]
    assert model.layout.token_id(SPECIALS[0]) == base
    assert (music.start, music.bos, music.eos) == (base + 4, base + 4 + 8192, base + 4 + 8193)
    assert (toy.start, toy.size, toy.eos) == (music.eos + 1, 16, music.eos + 18)
    assert len(model.layout) == toy.eos + 1 == len(model.tokenizer)
    assert model.backbone.get_input_embeddings().weight.shape[0] == len(model.layout)
    # the tokenizer now splits on the added tokens, one id each
    assert model.tokenizer.encode("<soty><🧪3><eoty>", bos=False) == [toy.bos, toy.start + 3, toy.eos]


def test_predict_keeps_going_past_bad_requests(model, tmp_path):
    (tmp_path / "notes.wav").write_text("these are not audio samples")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, torch.zeros(0).numpy(), 16000)
    toy_file = tmp_path / "toy.txt"
    toy_file.write_text("1 9 2 10")
    lines = [
        "text|music|A calm piano piece",
        f"music|text|{TONE}",
        f"music|text|{tmp_path / 'missing.wav'}",
        "text|video|a film",
        "text|music|",
        f"music|text|{empty}",
        "text|toy|four codes please",
        f"toy|text|{toy_file}",
        "text|music",
        f"music|text|{tmp_path / 'notes.wav'}",
    ]
    batch = [parse_line(line, i) for i, line in enumerate(lines)]
    for r in batch:
        r.seed = 1234 + r.index
    out = model.predict_step(batch)
    status = [r["status"] for r in out]
    assert status == ["ok", "ok", "error", "error", "error", "error", "ok", "ok", "error", "error"], out
    assert all(r["error"].startswith(f"request {r['index']}:") and "\n" not in r["error"] for r in out if r["status"] == "error")
    assert "missing.wav" in out[2]["error"] and "video" in out[3]["error"] and "empty.wav" in out[5]["error"]
    assert "notes.wav" in out[9]["error"]
    music = out[0]
    assert music["sample_rate"] == 32000 and music["media"].shape[0] == 1
    assert music["media"].shape[1] == 640 * (music["codes"] // 4) and music["codes"] % 4 == 0
    assert isinstance(out[1]["text"], str) and isinstance(out[7]["text"], str)
    assert out[6]["media"].shape == (1, 400)  # toy spans are exactly 4 codes, 100 samples each


def test_same_seed_same_output_regardless_of_batch(model):
    def run(lines, seeds):
        batch = [parse_line(line, i) for i, line in enumerate(lines)]
        for r, s in zip(batch, seeds):
            r.seed = s
        return model.predict_step(batch)

    alone = run(["text|music|A calm piano piece"], [7])[0]
    pair = run(["text|music|Something else entirely here", "text|music|A calm piano piece"], [8, 7])[1]
    assert torch.equal(alone["media"], pair["media"])


def test_parse_span_reports_grammar_breaks(model):
    music = model.layout.ranges["music"]
    good = [music.bos] + [music.start + 2048 * (i % 4) + 5 for i in range(8)] + [music.eos]
    codes, truncated = model.parse_span("music", good)
    assert codes.tolist() == [5 + 2048 * (i % 4) for i in range(8)] and not truncated
    cut, truncated = model.parse_span("music", good[:7])  # budget ran out mid-frame: whole frames kept
    assert truncated and len(cut) == 4
    with pytest.raises(ValueError, match="position 1"):
        model.parse_span("music", [music.bos, music.start, music.start, music.start, music.start, music.eos])
    with pytest.raises(AnyGPTError, match="not a music code"):
        model.parse_span("music", [music.bos, music.start, 5, music.eos])
    with pytest.raises(AnyGPTError, match="no <somu> span"):
        model.parse_span("music", [5, 6, 7])


def test_a_plugin_modality_lands_after_the_released_ids(tmp_path, music_codec):
    """A released-vocabulary model (image, speech, music blocks) plus a plug-in codec: the plug-in's block comes
    after every released id, which keep their ids and embeddings; the new rows are appended."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = TextTokenizer.tiny()
    layout = VocabLayout(len(tok))
    for spec in [("image", "👀", 8192, "<soim>", "<eoim>"), ("speech", "🗣️", 1024, "<sosp>", "<eosp>"),
                 ("music", "🎶", 8192, "<somu>", "<eomu>")]:
        layout.register(*spec)
    tok.add_tokens(layout.token_strings())
    folder = tmp_path / "AnyGPT-base"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    released = LlamaForCausalLM(LlamaConfig(vocab_size=len(layout), **BACKBONE))
    released.save_pretrained(folder)
    text = "<somu><🎶5><eomu> [MMGPT]: <eos>"
    before = TextTokenizer.from_pretrained(str(folder)).encode(text, bos=False)

    model = UnifiedLM(backbone=str(folder), codecs={"music": music_codec, "toy": ToyCodec()}, generation=SMALL)
    toy = model.layout.ranges["toy"]
    assert toy.start == len(layout) and toy.eos == len(layout) + 17 == len(model.layout) - 1
    assert model.layout.ranges["music"] == layout.ranges["music"]
    assert model.tokenizer.encode(text, bos=False) == before
    weights = model.backbone.get_input_embeddings().weight
    assert weights.shape[0] == len(layout) + 18
    assert torch.equal(weights[:len(layout)], released.get_input_embeddings().weight)
    out = model.predict_step([parse_line("text|toy|four codes", 0)])
    assert out[0]["status"] == "ok" and out[0]["codes"] == 4, out


def test_released_layout_is_read_from_the_tokenizer(tmp_path, music_codec):
    """A folder laid out like fnlp/AnyGPT-base (tokenizer with image, speech, music blocks + LlamaForCausalLM)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = TextTokenizer.tiny()
    layout = VocabLayout(len(tok))
    layout.register("image", "👀", 8192, "<soim>", "<eoim>")
    layout.register("speech", "🗣️", 1024, "<sosp>", "<eosp>")
    layout.register("music", "🎶", 8192, "<somu>", "<eomu>")
    tok.add_tokens(layout.token_strings())
    folder = tmp_path / "AnyGPT-base"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(layout), **BACKBONE)).save_pretrained(folder)

    model = UnifiedLM(backbone=str(folder), codecs={"music": music_codec}, generation=SMALL)
    assert model.layout.ranges["music"] == layout.ranges["music"]
    assert len(model.layout) == len(layout) == model.backbone.get_input_embeddings().weight.shape[0]
    out = model.predict_step([parse_line("text|music|a song", 0)])
    assert out[0]["status"] == "ok", out

    class WrongMusic(ToyCodec):
        modality, token_prefix, start_tag, end_tag, vocab_size = "music", "🎶", "<somu>", "<eomu>", 4096

    with pytest.raises(AnyGPTError, match="music block is 8192"):
        UnifiedLM(backbone=str(folder), codecs={"music": WrongMusic()})


def test_training_examples_follow_the_pretraining_template(model):
    music = model.layout.ranges["music"]
    codes = "".join(f"<🎶{3 + 2048 * (i % 4)}>" for i in range(8))
    record = {"text": "A calm song", "music": f"<somu>{codes}<eomu>"}
    directions = set()
    for seed in range(12):
        ids, task = model.build_example(record, random.Random(seed))
        directions.add(task)
        assert ids[0] == model.tokenizer.bos_id and ids[-1] == model.tokenizer.eos_id
        assert ids[-2] == model.reply_end_id and ids.count(music.bos) == 1
        span_at = ids.index(music.bos)
        if task == "music_to_text":
            assert span_at < ids.index(model.layout.token_id("<eoh>"))
        else:
            assert span_at > ids.index(model.layout.token_id("[MMGPT]"))
    assert directions == {"music_to_text", "text_to_music"}
    for bad, fragment in [
        ({"text": "", "music": f"<somu>{codes}<eomu>"}, "no text"),
        ({"text": "x", "video": "<sovi><eovi>"}, "unknown modality key"),
        ({"text": "x", "music": "<somu><🧪3><eomu>"}, "not a music code"),
        ({"text": "x", "music": "<somu><🎶3><🎶3><🎶3><🎶3><eomu>"}, "position 1"),
        ({"text": "x", "music": f"<somu>{codes}"}, "token string must be"),
    ]:
        with pytest.raises((AnyGPTError, ValueError), match=fragment):
            model.build_example(bad, random.Random(0))


def test_code_noise_replaces_a_share_of_the_input_codes_within_their_codebooks(model):
    music = model.layout.ranges["music"]
    codes = [3 + 2048 * (i % 4) for i in range(400)]
    record = {"text": "A calm song", "music": "<somu>" + "".join(f"<🎶{c}>" for c in codes) + "<eomu>"}
    clean, _ = model.build_example(record, random.Random(0), to_text_prob=1.0)
    noisy, task = model.build_example(record, random.Random(0), to_text_prob=1.0, code_noise=0.25)
    assert task == "music_to_text" and len(noisy) == len(clean)
    start = clean.index(music.bos) + 1
    got = music.from_lm(noisy[start:start + len(codes)]).tolist()
    changed = [i for i, (a, b) in enumerate(zip(codes, got)) if a != b]
    assert 0.15 < len(changed) / len(codes) < 0.3  # 0.25 drawn, minus draws that hit the same code
    assert all(2048 * (i % 4) <= got[i] < 2048 * (i % 4 + 1) for i in range(len(codes)))  # the position's codebook
    assert noisy[:start] == clean[:start] and noisy[start + len(codes):] == clean[start + len(codes):]
    spoken, task = model.build_example(record, random.Random(0), to_text_prob=0.0, code_noise=0.25)
    assert task == "text_to_music" and music.from_lm(spoken[spoken.index(music.bos) + 1:][:len(codes)]).tolist() == codes


def test_text_dropout_leaves_out_the_text_of_a_share_of_from_text_examples(model):
    music = model.layout.ranges["music"]
    record = {"text": "A calm song", "music": "<somu>" + "".join(f"<🎶{2048 * (i % 4)}>" for i in range(8)) + "<eomu>"}
    texts = []
    for seed in range(200):
        ids, task = model.build_example(record, random.Random(seed), to_text_prob=0.0, text_dropout=0.3)
        assert task == "text_to_music"
        texts.append(model.tokenizer.decode(ids[:ids.index(music.bos)]))
    dropped = [t for t in texts if "calm" not in t]
    assert 0.2 < len(dropped) / len(texts) < 0.4
    assert all("".join(t.split()).endswith("Thisisinput:<eoh>[MMGPT]:") for t in dropped), dropped[:2]
    for seed in range(20):  # to-text examples keep their caption as the answer
        ids, _ = model.build_example(record, random.Random(seed), to_text_prob=1.0, text_dropout=0.9)
        assert "calm" in model.tokenizer.decode(ids)
    kept, _ = model.build_example(record, random.Random(3), to_text_prob=0.0)
    assert kept == model.build_example(record, random.Random(3), to_text_prob=0.0, text_dropout=0.0)[0]


def test_a_guided_request_decodes_beside_its_prompt_without_text(music_codec, monkeypatch):
    import anygpt.lm.unified as unified

    guided = {**SMALL, "music": {"max_new_tokens": 24, "guidance_scale": 3.0}}
    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"music": music_codec}, generation=guided)
    seen = {}
    real = unified.generate
    monkeypatch.setattr(unified, "generate", lambda *a, **k: seen.update(args=a, kwargs=k) or real(*a, **k))
    out = model.predict_step([parse_line("text|music|a calm song", 0), parse_line("music|text|" + "x.wav", 1)])
    assert out[0]["status"] == "ok"
    [prompt], [unconditional] = seen["args"][1], seen["kwargs"]["unconditional"]
    words = "".join(model.tokenizer.decode(unconditional).split())
    assert "calm" in model.tokenizer.decode(prompt) and "calm" not in words
    assert words.endswith("Thisisinput:<eoh>[MMGPT]:")
    assert words.replace("Thisisinput:<eoh>[MMGPT]:", "") in "".join(model.tokenizer.decode(prompt).split())


def test_without_the_grammar_decode_reports_broken_spans(music_codec, monkeypatch):
    import anygpt.lm.unified as unified

    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"music": music_codec}, generation=SMALL,
                      grammar=False)
    music = model.layout.ranges["music"]
    wrong_layer = [music.bos] + [music.start + 1] * 4 + [music.eos]  # slot 1 should hold a layer-1 code
    no_span = [model.tokenizer.space_id, model.reply_end_id]
    good = [music.bos] + [music.start + 2048 * (i % 4) for i in range(4)] + [music.eos]
    monkeypatch.setattr(unified, "generate", lambda *a, **k: [wrong_layer, no_span, good])
    out = model.predict_step([parse_line(f"text|music|case {i}", i) for i in range(3)])
    assert [r["status"] for r in out] == ["error", "error", "ok"]
    assert "position 1" in out[0]["error"] and "no <somu> span" in out[1]["error"]
    assert out[2]["media"].shape == (1, 640)


def test_plugin_spans_are_checked_by_their_allowed_ranges(model):
    """A codec without check_codes still gets its grammar checked from allowed() and span_length."""
    toy = model.layout.ranges["toy"]
    codes, _ = model.parse_span("toy", [toy.bos, toy.start + 1, toy.start + 9, toy.start + 2, toy.start + 10, toy.eos])
    assert codes.tolist() == [1, 9, 2, 10]
    with pytest.raises(ValueError, match="position 1"):
        model.parse_span("toy", [toy.bos, toy.start + 1, toy.start + 2, toy.start + 3, toy.start + 9, toy.eos])
    with pytest.raises(ValueError, match="incomplete"):
        model.parse_span("toy", [toy.bos, toy.start + 1, toy.start + 9, toy.eos])
