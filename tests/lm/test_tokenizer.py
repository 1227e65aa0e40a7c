"""TextTokenizer against the golden ids and strings of transformers 4.34.1 (fixtures/prompts/public)."""

from __future__ import annotations

import functools
import json
import time

import pytest

from anygpt import AnyGPTError
from anygpt.lm.tokenizer import TextTokenizer, _train_tiny
from anygpt.tokenizers.vocab import VocabLayout
from tests.conftest import FIXTURES, fixture_path

ANYGPT = ["[Human]", "[MMGPT]", "<eoh>", "<eos>"] + [f"<👀{i}>" for i in range(64)] + ["<soim>", "<eoim>"]


@functools.lru_cache(maxsize=1)
def _cases_at(path: str) -> dict:
    return json.loads(open(path, encoding="utf-8").read())


def cases() -> dict:
    return _cases_at(str(fixture_path("prompts", "public", "cases.json")))


@functools.lru_cache(maxsize=1)
def _tok_at(path: str) -> TextTokenizer:
    return TextTokenizer.from_pretrained(path)


def released() -> TextTokenizer:
    """The fixture tokenizer (shared, never mutated by tests)."""
    return _tok_at(str(fixture_path("prompts", "public", "tokenizer")))


def _ids(kind: str) -> list[str]:
    """Case ids for parametrize (collection must not skip); the tests read the fixture through fixture_path."""
    path = FIXTURES / "prompts" / "public" / "cases.json"
    return [c["id"] for c in _cases_at(str(path))[kind]] if path.exists() else ["fixtures-absent"]


def _case(kind: str, case_id: str) -> dict:
    cases()  # skips where the fixtures are absent
    return next(c for c in cases()[kind] if c["id"] == case_id)


@pytest.mark.parametrize("case_id", _ids("encode_checks"))
def test_encode_checks(case_id):
    case = _case("encode_checks", case_id)
    assert released().encode(case["text"], bos=case["add_special_tokens"]) == case["ids"]


@pytest.mark.parametrize("case_id", _ids("decode_checks"))
def test_decode_checks(case_id):
    case = _case("decode_checks", case_id)
    assert released().decode(case["ids"], skip_special_tokens=case["skip_special_tokens"]) == case["text"]


@pytest.mark.parametrize("case_id", _ids("quirk_probes"))
def test_quirk_probes(case_id):
    case, tok = _case("quirk_probes", case_id), released()
    assert tok.encode(case["text"], bos=False) == case["ids"]
    assert tok.encode(case["text"]) == case["ids_with_bos"]
    assert [tok.id_to_piece(i) for i in case["ids"]] == case["tokens"]
    assert tok.decode(case["ids"]) == case["decode"]
    assert tok.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]


@pytest.mark.parametrize("case_id", _ids("decode_probes"))
def test_decode_probes(case_id):
    case, tok = _case("decode_probes", case_id), released()
    assert [tok.id_to_piece(i) for i in case["ids"]] == case["tokens"]
    assert tok.decode(case["ids"]) == case["decode"]
    assert tok.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special"]


def test_modality_strings_encode_and_decode():
    tok = released()
    for case in cases()["modality_strings"]:
        assert tok.encode(case["string"], bos=False) == case["ids"], case["id"]
        assert tok.decode(case["ids"]) == case["decode"], case["id"]
        assert "".join(tok.id_to_piece(i) for i in case["ids"]) == case["string"], case["id"]


def test_vocabulary_facts():
    tok, layout = released(), cases()["vocab_layout"]
    vocab = tok.get_vocab()
    for token, i in layout.items():
        if token == "len(tokenizer)":
            assert len(tok) == i
        elif token == "sp_vocab_size":
            assert tok.sp_size == i
        else:
            assert vocab[token] == i and tok.id_to_piece(i) == token
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.space_id) == (0, 1, 2, 0, layout["▁"])
    assert len(vocab) == len(tok)


def test_chat_prompt_ids():
    tok = released()
    for chat in cases()["chat"]:
        for turn in chat["turns"]:
            assert tok.encode(turn["prompt"]) == turn["input_ids"], chat["id"]


def test_long_code_string_is_fast():
    tok = released()
    codes = [(i * 7919) % 8192 for i in range(4000)]
    text = "Describe: <somu>" + "".join(f"<🎶{c}>" for c in codes) + "<eomu> done"
    start = time.perf_counter()
    ids = tok.encode(text, bos=False)
    assert time.perf_counter() - start < 0.5
    assert ids[ids.index(18416) + 1:ids.index(18417)] == [10224 + c for c in codes]


def test_added_file_tables_must_agree(tmp_path):
    src = fixture_path("prompts", "public", "tokenizer")
    (tmp_path / "tokenizer.model").write_bytes((src / "tokenizer.model").read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[Human]": 1000, "[MMGPT]": 1001}))
    config = {"added_tokens_decoder": {"1000": {"content": "[Human]"}, "1002": {"content": "[MMGPT]"}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(AnyGPTError, match="tokenizer_config.json"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    assert TextTokenizer.from_pretrained(tmp_path).encode("[MMGPT][Human]", bos=False) == [1001, 1000]


def test_layout_from_released_tokenizer():
    tok, layout = released(), cases()["vocab_layout"]
    codecs = [_Codec("image", "👀", "<soim>", "<eoim>", 8192), _Codec("speech", "🗣️", "<sosp>", "<eosp>", 1024),
              _Codec("music", "🎶", "<somu>", "<eomu>", 8192)]
    vocab = VocabLayout.from_tokenizer(tok, codecs)
    assert len(vocab) == layout["len(tokenizer)"] and vocab.base_size == layout["sp_vocab_size"]
    for name, prefix, start, end in (("image", "👀", "soim", "eoim"), ("speech", "🗣️", "sosp", "eosp"),
                                     ("music", "🎶", "somu", "eomu")):
        rng = vocab.ranges[name]
        assert (rng.start, rng.stop - 1) == (layout[f"<{prefix}0>"], layout[f"<{prefix}{rng.size - 1}>"])
        assert (rng.bos, rng.eos) == (layout[f"<{start}>"], layout[f"<{end}>"])


class _Codec:
    def __init__(self, modality, token_prefix, start_tag, end_tag, vocab_size):
        self.modality, self.token_prefix, self.vocab_size = modality, token_prefix, vocab_size
        self.start_tag, self.end_tag = start_tag, end_tag


# --- tiny() and the saved folder ---


def test_tiny_is_deterministic_and_fast():
    _train_tiny.cache_clear()
    start = time.perf_counter()
    first = _train_tiny(400)
    assert time.perf_counter() - start < 1.0
    _train_tiny.cache_clear()
    assert _train_tiny(400) == first
    a, b = TextTokenizer.tiny(), TextTokenizer.tiny()
    text = "A red fox  sleeping : under 3 trees.\n"
    assert a.encode(text) == b.encode(text) and a.sp_size == 400 and len(a) == 400
    assert a.get_vocab() == b.get_vocab()


def test_tiny_has_llama_style_pieces():
    tok = TextTokenizer.tiny()
    vocab = tok.get_vocab()
    assert {"▁▁", "▁:", "<0x0A>", "<unk>", "<s>", "</s>"} <= set(vocab)
    assert (vocab["<unk>"], vocab["<s>"], vocab["</s>"], vocab["<0x00>"], vocab["<0x0A>"]) == (0, 1, 2, 3, 13)
    assert tok.space_id == vocab["▁"]
    # digits are split; unseen characters fall back to bytes; the dummy prefix is per chunk
    assert [tok.id_to_piece(i) for i in tok.encode("1024", bos=False)] == ["▁", "1", "0", "2", "4"]
    assert [tok.id_to_piece(i) for i in tok.encode("é", bos=False)] == ["▁", "<0xC3>", "<0xA9>"]
    assert tok.decode(tok.encode("Hello  world : 12 ok", bos=False)) == "Hello  world : 12 ok"


def test_add_tokens_and_round_trip(tmp_path):
    tok = TextTokenizer.tiny()
    assert tok.add_tokens(ANYGPT) == len(ANYGPT)
    assert tok.add_tokens(["<eoh>", "▁a", "<new>", "<new>"]) == 1  # present ones (and pieces) are skipped
    assert tok.get_vocab()["[Human]"] == 400 and tok.get_vocab()["<new>"] == 400 + len(ANYGPT)
    text = "[Human]: Look <soim><👀3><👀63><eoim><eoh> [MMGPT]: <👀64> <👀 1> </s>x<new>"
    ids = tok.encode(text)
    assert ids[:2] == [1, 400] and ids.count(2) == 1
    loaded = TextTokenizer.from_pretrained(tok.save_pretrained(tmp_path / "tok"))
    assert loaded.encode(text) == ids and loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(tok)
    assert loaded.decode(ids) == tok.decode(ids)
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    assert config["added_tokens_decoder"]["400"] == {"content": "[Human]", "normalized": True, "special": False}


def test_adding_the_full_anygpt_table_is_fast():
    layout = VocabLayout(400)
    for spec in (("image", "👀", 8192, "<soim>", "<eoim>"), ("speech", "🗣️", 1024, "<sosp>", "<eosp>"),
                 ("music", "🎶", 8192, "<somu>", "<eomu>")):
        layout.register(*spec)
    tok = TextTokenizer.tiny()
    start = time.perf_counter()
    assert tok.add_tokens(layout.token_strings()) == 17418
    assert time.perf_counter() - start < 1.0 and len(tok) == len(layout) == 17818
    text = "<sosp><🗣️0><🗣️1023><eosp><🗣1><👀8192>"
    assert tok.encode(text, bos=False)[:4] == layout.ids_from_string("<sosp><🗣️0><🗣️1023><eosp>")
    assert tok.decode(tok.encode(text, bos=False)) == "<sosp> <🗣️0> <🗣️1023> <eosp> <🗣1><👀8192>"


def test_saved_folder_matches_transformers(tmp_path):
    """Findings 2a: transformers 5.x SentencePieceBackend(special_tokens_pattern="bos") encodes as 4.34.1."""
    backend = pytest.importorskip("transformers").SentencePieceBackend
    tok = TextTokenizer.tiny()
    tok.add_tokens(ANYGPT)
    hf = backend.from_pretrained(str(tok.save_pretrained(tmp_path)), special_tokens_pattern="bos")
    for text in ["[Human]: Hi<eoh> [MMGPT]:", "a <soim>", "<soim>  a", "x  <eoh>", "<eoh>\n[MMGPT]:",
                 "  two leading", "<👀64> <👀07>", "Meet at 7:45.", "[Human]: Look <soim><👀3><eoim><eoh> [MMGPT]:"]:
        assert tok.encode(text) == hf(text).input_ids, text
    assert len(hf) == len(tok)


def test_errors():
    tok = TextTokenizer.tiny()
    with pytest.raises(AnyGPTError):
        tok.id_to_piece(10**6)
    with pytest.raises(AnyGPTError):
        TextTokenizer(b"not a model")
    with pytest.raises(AnyGPTError):
        TextTokenizer(_train_tiny(400), {"<x>": 5})  # inside the SentencePiece range
    with pytest.raises(AnyGPTError):
        TextTokenizer.from_pretrained("/nonexistent/tokenizer/folder")


def test_random_strings_encode_as_the_reference_backend():
    """Seeded random mixes of added tokens, near-misses, spaces and newlines vs. transformers' SentencePieceBackend
    (Findings 2a: it encodes exactly as 4.34.1) on the fixture tokenizer."""
    import random

    backend = pytest.importorskip("transformers").SentencePieceBackend
    folder = fixture_path("prompts", "public", "tokenizer")
    ours, ref = TextTokenizer.from_pretrained(folder), backend.from_pretrained(str(folder), special_tokens_pattern="bos")
    atoms = ["[Human]", "[MMGPT]", "<eoh>", "<eos>", "<soim>", "<eoim>", "<👀12>", "<🗣️5>", "<🗣5>", "<🎶8191>",
             "<🎶8192>", "<s>", "</s>", "<unk>", " ", "  ", "\n", "\t", ":", "Hello", " world", "7:45", "日本語", "😀",
             "<", ">", "<<eoh>>", "café", "x", "[Human", "eoh>", "<sosp>", "<-Res->", "!?"]
    rng = random.Random(0)
    for _ in range(400):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 8)))
        bos = rng.random() < 0.5
        assert ours.encode(text, bos=bos) == ref(text, add_special_tokens=bos).input_ids, repr(text)
