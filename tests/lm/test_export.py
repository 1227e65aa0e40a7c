"""``anygpt export``: a fit checkpoint (a file or a sharded folder) becomes a Hugging Face folder that transformers
and ``UnifiedLM`` load to the trained model's logits, with a tokenizer that gives its ids; bad inputs are one line."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from anygpt import AnyGPTError
from anygpt.cli import AnyGPTCLI, main
from anygpt.lm import export as export_module
from anygpt.lm.checkpoints import model_from_checkpoint, read_checkpoint
from anygpt.lm.export import export, save_tokenizer
from anygpt.lm.tokenizer import TextTokenizer
from anygpt.lm.unified import UnifiedLM
from tests.conftest import fixture_path

ROOT = Path(__file__).resolve().parents[2]
SFT = "tests/configs/fit_sft_tiny.yaml"
LORA = "tests/configs/fit_lora_tiny.yaml"
TEXTS = ["[Human]: Read this aloud: Hello  there.<eoh> [MMGPT]: <sosp><🗣️0><🗣️17><🗣️1023><eosp><eos>",
         "<-Res->  Answer : yes.<-Ins-> Say it<eoh>\n[MMGPT]: : fine <sosp><🗣️5><🗣️5><eosp> ok<eos></s>",
         "  Two leading spaces, digits 6:30 and ünï 中文"]


def _fit(root: Path, config: str) -> tuple[Path, UnifiedLM]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        cli = AnyGPTCLI(args=["fit", "--config", config, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])
    [ckpt] = root.rglob("*.ckpt")
    return ckpt, cli.model.eval()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, UnifiedLM]:
    """Two SFT steps of the tiny config (speech codec, added tokens <-Res-> <-Ins->): the checkpoint, the module."""
    return _fit(tmp_path_factory.mktemp("fit"), SFT)


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory) -> Path:
    """The checkpoint exported with shards of at most 100 KB (the 1432 x 32 embedding alone is 183 KB)."""
    return export(fitted[0], tmp_path_factory.mktemp("export") / "hf", max_shard_size="100KB")


def _ids(model: UnifiedLM) -> torch.Tensor:
    rows = [model.tokenizer.encode(t) for t in TEXTS]
    width = max(map(len, rows))
    return torch.tensor([r + [model.tokenizer.eos_id] * (width - len(r)) for r in rows])


@torch.no_grad()
def _logits(backbone, ids: torch.Tensor) -> torch.Tensor:
    return backbone(input_ids=ids).logits


def test_export_gives_the_trained_logits(fitted, exported):
    _, trained = fitted
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer.model", "tokenizer_config.json", "added_tokens.json", "README.md"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    assert not list(exported.parent.glob(".*partial"))

    ids = _ids(trained)
    expected = _logits(trained.backbone, ids)
    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert hf.dtype == torch.float32
    torch.testing.assert_close(_logits(hf, ids), expected, atol=1e-5, rtol=0)

    reloaded = UnifiedLM(backbone=str(exported), tokenizer=None, codecs=trained.hparams["codecs"]).eval()
    assert reloaded.layout.token_strings() == trained.layout.token_strings()
    assert reloaded.layout.ranges == trained.layout.ranges
    assert [reloaded.tokenizer.encode(t) for t in TEXTS] == [trained.tokenizer.encode(t) for t in TEXTS]
    torch.testing.assert_close(_logits(reloaded.backbone, ids), expected, atol=1e-5, rtol=0)


def test_exported_tokenizer_gives_the_models_ids(fitted, exported):
    _, trained = fitted
    auto = AutoTokenizer.from_pretrained(exported)
    text = TextTokenizer.from_pretrained(exported)
    for t in TEXTS + [trained.tokenizer.id_to_piece(i) for i in (trained.layout.token_id("<-Res->"), 1, 2)]:
        expected = trained.tokenizer.encode(t)
        assert auto(t).input_ids == expected, t
        assert text.encode(t) == expected, t
        assert text.decode(expected) == trained.tokenizer.decode(expected)
    assert len(auto) == len(text) == len(trained.tokenizer)
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1, 2, 0)
    readme = (exported / "README.md").read_text(encoding="utf-8")
    assert "gives the ids the model was trained with" in readme and "SpeechTokenizerCodec" in readme


def test_fixture_cases_through_the_exported_tokenizer_files(tmp_path):
    """The golden ids of transformers 4.34.1's slow LlamaTokenizer (prompts, token strings, probes) from
    ``AutoTokenizer`` on the files that the export writes for the fixture tokenizer."""
    folder = fixture_path("prompts", "public")
    cases = json.loads((folder / "cases.json").read_text(encoding="utf-8"))["encode_checks"]
    tokenizer = TextTokenizer.from_pretrained(folder / "tokenizer")
    save_tokenizer(tokenizer, tmp_path)
    LlamaConfig(vocab_size=len(tokenizer)).save_pretrained(tmp_path)  # as in an export: AutoTokenizer sees llama
    auto = AutoTokenizer.from_pretrained(tmp_path)
    wrong = [c["id"] for c in cases
             if auto(c["text"], add_special_tokens=c["add_special_tokens"]).input_ids != c["ids"]]
    assert cases and wrong == []
    assert TextTokenizer.from_pretrained(tmp_path).get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("layout", ["model_parallel", "fsdp"])
def test_cli_exports_a_sharded_folder(layout, fitted, exported, tmp_path, capsys):
    """A folder as ModelParallelStrategy (``state_dict``) or FSDPStrategy (``model``) writes it, optimizer states
    included, exports through ``anygpt export`` to the single file's weights; ``--dtype bfloat16`` casts them."""
    folder = _sharded(fitted[0], tmp_path / "ckpt", "state_dict" if layout == "model_parallel" else "model")
    main(["export", "--ckpt_path", str(folder), "--output_dir", str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert f"wrote {tmp_path / 'hf'}" in capsys.readouterr().out
    full = AutoModelForCausalLM.from_pretrained(exported).state_dict()
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto").state_dict()
    assert set(half) == set(full)
    for key, value in half.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, full[key].to(torch.bfloat16)), key


def _sharded(ckpt: Path, folder: Path, key: str) -> Path:
    """The layout of Lightning's sharded save: weights and optimizer states in DCP shards, the rest in meta.pt."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = {key: checkpoint.pop("state_dict")}
    state.update({f"optimizer_{i}": o for i, o in enumerate(checkpoint.pop("optimizer_states"))})
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        save(state, storage_writer=FileSystemWriter(folder, single_file_per_rank=False))
    torch.save(checkpoint, folder / "meta.pt")
    return folder


def test_lora_checkpoint_exports_merged(tmp_path):
    if not hasattr(UnifiedLM, "merge_adapters") or not (ROOT / LORA).exists():
        pytest.skip("UnifiedLM has no LoRA adapters to merge here")
    ckpt, trained = _fit(tmp_path / "fit", LORA)
    assert hasattr(trained.backbone, "merge_and_unload")
    out = export(ckpt, tmp_path / "hf")
    ids = _ids(trained)
    hf = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(hf, ids), _logits(trained.backbone, ids), atol=1e-5, rtol=0)


def test_tokenizer_that_cannot_give_the_ids_is_said(fitted, tmp_path, monkeypatch, caplog):
    """Where AutoTokenizer's ids differ (here: a tokenizer.json without SentencePiece's dummy prefix), the folder's
    README and one warning line say so and name TextTokenizer, which gives the model's ids from the folder."""
    from tokenizers import normalizers

    build = export_module._fast_tokenizer

    def without_prefix(*args):
        fast = build(*args)
        fast.normalizer = normalizers.Replace(" ", "\u2581")
        return fast

    monkeypatch.setattr(export_module, "_fast_tokenizer", without_prefix)
    with caplog.at_level(logging.WARNING, logger="anygpt.lm.export"):
        out = export(fitted[0], tmp_path / "hf")
    [record] = [r for r in caplog.records if r.name == "anygpt.lm.export"]
    assert "\n" not in record.getMessage() and "TextTokenizer.from_pretrained" in record.getMessage()
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "does not give AnyGPT's ids" in readme and "TextTokenizer.from_pretrained" in readme
    trained = fitted[1].tokenizer
    assert AutoTokenizer.from_pretrained(out)(TEXTS[0]).input_ids != trained.encode(TEXTS[0])
    assert [TextTokenizer.from_pretrained(out).encode(t) for t in TEXTS] == [trained.encode(t) for t in TEXTS]


# ----------------------------------------------------------------- bad inputs


def _one_line(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and all(p in message for p in parts), message
    return message


def test_non_empty_output_folder_is_refused_untouched(fitted, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AnyGPTError) as excinfo:
        export(fitted[0], out)
    _one_line(excinfo, str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_missing_checkpoint_is_one_line_from_the_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--output_dir", str(tmp_path / "hf")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"anygpt: error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"
    assert not (tmp_path / "hf").exists()


def test_checkpoint_of_another_shape_names_the_key(fitted, tmp_path):
    ckpt = fitted[0]
    bigger = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 1024}
    with pytest.raises(AnyGPTError) as excinfo:
        model_from_checkpoint(ckpt, backbone=bigger)
    _one_line(excinfo, str(ckpt), "backbone.model.embed_tokens.weight", "(1432, 32)", "(1432, 64)")

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    key = "backbone.model.layers.1.mlp.up_proj.weight"
    checkpoint["state_dict"][key] = torch.zeros(65, 32)
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    with pytest.raises(AnyGPTError) as excinfo:
        export(tmp_path / "tampered.ckpt", tmp_path / "hf")
    _one_line(excinfo, "tampered.ckpt", key, "(65, 32)", "(64, 32)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tampered.ckpt"]


def test_damaged_truncated_or_missing_shard_and_other_folders(fitted, tmp_path):
    folder = _sharded(fitted[0], tmp_path / "ckpt", "state_dict")
    shards = sorted(folder.glob("*.distcp"))
    assert len(shards) > 2
    data = shards[1].read_bytes()
    shards[1].write_bytes(bytes(len(data)))
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(folder)
    _one_line(excinfo, str(folder), "damaged")
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(folder)
    _one_line(excinfo, str(folder), shards[1].name, "truncated")
    shards[1].unlink()
    with pytest.raises(AnyGPTError) as excinfo:
        export(folder, tmp_path / "hf")
    _one_line(excinfo, str(folder), shards[1].name, "missing")

    (tmp_path / "plain").mkdir()
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(tmp_path / "plain")
    _one_line(excinfo, str(tmp_path / "plain"), "not a distributed checkpoint")
    assert not (tmp_path / "hf").exists()


def test_files_that_are_not_unifiedlm_checkpoints(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(tmp_path / "notes.ckpt")
    _one_line(excinfo, "cannot read checkpoint", "notes.ckpt")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:2000])
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(tmp_path / "cut.ckpt")
    _one_line(excinfo, "cut.ckpt", "truncated")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "weights.ckpt")
    with pytest.raises(AnyGPTError) as excinfo:
        read_checkpoint(tmp_path / "weights.ckpt")
    _one_line(excinfo, "weights.ckpt", "not a Lightning checkpoint of UnifiedLM", "hyper_parameters")
    torch.save({"state_dict": {}, "hyper_parameters": {"manifest": "x.jsonl"}}, tmp_path / "other.ckpt")
    with pytest.raises(AnyGPTError) as excinfo:
        model_from_checkpoint(tmp_path / "other.ckpt")
    _one_line(excinfo, "other.ckpt", "manifest")
