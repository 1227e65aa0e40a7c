"""``anygpt export``: a fit checkpoint becomes a Hugging Face folder (config, safetensors, tokenizer).

``transformers.AutoModelForCausalLM`` and ``AutoTokenizer`` load the folder; so does ``UnifiedLM(backbone=folder)``
with the checkpoint's codecs. The tokenizer is written twice over: ``tokenizer.model`` with the added tokens (what
``TextTokenizer`` and a slow ``LlamaTokenizer`` read) and a ``tokenizer.json`` built from it so that the fast
tokenizer splits the text at the added tokens first and gives every chunk SentencePiece's dummy prefix, as
transformers 4.34.1's slow ``LlamaTokenizer(legacy=True)`` did in training. The export checks these ids on probe
texts; where they differ, the folder's README and a warning say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from anygpt import AnyGPTError

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "int8")
_SPACE = "\u2581"
_CAPTIONS = ["A red fox sleeping under a maple tree in autumn, with 3 small birds nearby",
             "  Two leading spaces, then text.", "Trailing spaces stay here.   ",
             "Answer : yes.  Reason : the light is on.", "Meet at 6:30 by gate 12, floor 3.", "Tabs\tand\nnew lines",
             "Ünïcödé – 中文 🙂 naïve café"]


def export(ckpt_path: str | os.PathLike, output_dir: str | os.PathLike, max_shard_size: int | str = "5GB",
           dtype: str | None = None) -> Path:
    """Write the checkpoint's model as a Hugging Face folder.

    The folder is written beside ``output_dir`` under a temporary name and renamed when complete, so a failure
    leaves nothing behind.

    Args:
        ckpt_path: A fit checkpoint: a ``.ckpt`` file or a distributed-checkpoint folder.
        output_dir: The folder to create; it must not exist or be empty.
        max_shard_size: Largest weight file (``"5GB"``, ``"500MB"``, ``"2GiB"`` or bytes); bigger models get several
            files and an index.
        dtype: Weight dtype of the export (``float32``, ``bfloat16``, ``float16``; ``int8``: weight-only int8 with
            a float16 scale per row, ``anygpt.lm.int8_weights``, which ``UnifiedLM`` reads); None keeps the
            checkpoint's.

    Returns:
        The output folder.

    Raises:
        AnyGPTError: The output folder is not empty, the dtype or shard size is invalid, or the checkpoint cannot
            be read or does not fit its model (one line).
    """
    import torch

    from anygpt.lm.checkpoints import model_from_checkpoint
    from anygpt.lm.packed_attention import NAME as PACKED

    out = Path(os.fspath(output_dir)).expanduser()
    _check_empty(out)
    if dtype is not None and dtype not in DTYPES:
        raise AnyGPTError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    shard_bytes = _shard_bytes(max_shard_size)
    model = model_from_checkpoint(ckpt_path)
    backbone = _plain_backbone(model, ckpt_path)
    if dtype is not None:
        backbone.to(torch.float16 if dtype == "int8" else getattr(torch, dtype))
    if backbone.config._attn_implementation == PACKED:
        backbone.config._attn_implementation = "sdpa"  # "packed" is registered by anygpt, not by transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    try:
        backbone.save_pretrained(tmp, max_shard_size=shard_bytes)
        if dtype == "int8":
            from anygpt.lm.int8_weights import write_int8

            write_int8(tmp)
        save_tokenizer(model.tokenizer, tmp)
        texts = probe_texts(model)
        encode_bad, decode_bad = check_tokenizer(tmp, model.tokenizer, texts)
        (tmp / "README.md").write_text(_readme(out, ckpt_path, model, len(texts), encode_bad, decode_bad),
                                       encoding="utf-8")
        _check_empty(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if encode_bad:
        logger.warning("%s: transformers' AutoTokenizer gives other ids than the model's tokenizer on %d of %d probe "
                       "texts; use `from anygpt.lm.tokenizer import TextTokenizer; TextTokenizer.from_pretrained(%r)` "
                       "(see its README.md)", out, len(encode_bad), len(texts), str(out))
    return out


def _check_empty(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise AnyGPTError(f"output folder {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        raise AnyGPTError(f"output folder {out} is not empty (nothing written; choose a new or empty folder)")


def _shard_bytes(size: int | str) -> int:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(int(size) if isinstance(size, str) and size.isdigit() else size)
    except (ValueError, TypeError, AttributeError):
        value = 0
    if not isinstance(value, int) or value <= 0:
        raise AnyGPTError(f"--max_shard_size {size!r} is not a size such as 5GB, 500MB, 2GiB or a number of bytes")
    return value


def _plain_backbone(model: Any, ckpt_path: str | os.PathLike) -> Any:
    """The backbone as a plain transformers model, LoRA adapters merged into its weights."""
    from transformers import PreTrainedModel

    model.merge_adapters()  # nothing to do without LoRA
    backbone = model.backbone
    if not isinstance(backbone, PreTrainedModel) or hasattr(backbone, "peft_config"):
        raise AnyGPTError(f"checkpoint {ckpt_path}: the backbone is a {type(backbone).__name__}, not a plain "
                          "transformers model, after merging adapters")
    return backbone


# ----------------------------------------------------------------- tokenizer


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike) -> None:
    """Write a ``TextTokenizer`` as files that both ``TextTokenizer`` and ``transformers.AutoTokenizer`` read.

    ``tokenizer.model``, ``added_tokens.json`` and ``special_tokens_map.json`` are ``TextTokenizer.save_pretrained``'s;
    ``tokenizer.json`` is built from the SentencePiece model, and ``tokenizer_config.json`` names it
    (``PreTrainedTokenizerFast``) with every added token matched on the raw text (``normalized: false``).

    Args:
        tokenizer: The model's ``TextTokenizer`` (its added tokens included).
        folder: An existing folder.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    _fast_tokenizer(tokenizer, folder / "tokenizer.model").save(str(folder / "tokenizer.json"))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for entry in config.get("added_tokens_decoder", {}).values():
        entry.update(normalized=False, lstrip=False, rstrip=False, single_word=False)
    config.update(tokenizer_class="PreTrainedTokenizerFast", use_fast=True)
    config_file.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")


def _fast_tokenizer(tokenizer: Any, sp_model: Path) -> Any:
    """A ``tokenizers`` BPE over the SentencePiece pieces, merges ranked by the merged piece's score (SentencePiece
    BPE merges the best-scored pair first), with the dummy prefix added to every chunk between added tokens."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    plain = [i for i in range(size) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))]
    pieces = {sp.id_to_piece(i) for i in plain}
    merges = []
    for i in sorted(plain, key=lambda i: (-sp.get_score(i), i)):
        piece = sp.id_to_piece(i)
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in pieces and piece[k:] in pieces]
        merges.extend(sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    fast = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=sp.id_to_piece(sp.unk_id()), fuse_unk=True,
                         byte_fallback=True))
    dummy_prefix = "".join(sp.encode("a", out_type=str)).startswith(_SPACE)
    steps = [normalizers.Prepend(_SPACE)] if dummy_prefix else []
    fast.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", _SPACE)])
    fast.pre_tokenizer = None
    strip = [decoders.Strip(" ", 1, 0)] if dummy_prefix else []
    fast.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    specials = [tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id]
    fast.add_special_tokens([AddedToken(tokenizer.id_to_piece(i), special=True, normalized=False) for i in specials])
    added = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= tokenizer.sp_size)
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for _, t in added])
    wrong = next(((t, i) for i, t in added if fast.token_to_id(t) != i), None)
    if wrong:
        raise AnyGPTError(f"added token {wrong[0]!r} would get id {fast.token_to_id(wrong[0])} instead of {wrong[1]}")
    bos = tokenizer.id_to_piece(tokenizer.bos_id)
    fast.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                        special_tokens=[(bos, tokenizer.bos_id)])
    return fast


def probe_texts(model: Any) -> list[str]:
    """Texts the way AnyGPT tokenizes them: base prompts with every instruction and modality span, chat turns,
    captions with runs of spaces, digits and characters outside the pieces."""
    from anygpt.lm.prompts import DIRECTIONS, base_prompt_text

    texts = list(_CAPTIONS)
    for modality, rng in model.layout.ranges.items():
        span = [rng.bos, *range(rng.start, rng.start + min(rng.size, 12)), rng.start + rng.size - 1, rng.eos]
        for direction in DIRECTIONS:
            for k, instruction in enumerate(model.instructions.pool(direction, modality)):
                text = _CAPTIONS[k % len(_CAPTIONS)]
                texts.append(base_prompt_text(model.tokenizer, instruction, text=text) if direction == "from_text"
                             else base_prompt_text(model.tokenizer, instruction, span_ids=span))
        tags = "".join(model.tokenizer.id_to_piece(i) for i in span)
        texts.append(f"[Human]: {tags} What is this?<eoh>\n[MMGPT]: : It is {tags}  there.<eos>\n[MMGPT]:")
    plain = [t for t in model.layout.token_strings() if not re.fullmatch(r"<\D+\d+>", t)]
    texts.append(" ".join(plain) + "x" + "".join(plain) + "  y ")
    return texts


def check_tokenizer(folder: str | os.PathLike, tokenizer: Any, texts: list[str]) -> tuple[list[str], list[str]]:
    """The probe texts on which ``AutoTokenizer.from_pretrained(folder)`` gives other ids than ``tokenizer``, and
    those whose ids it decodes to another string (``skip_special_tokens=True``, as AnyGPT's CLIs decode)."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(os.fspath(folder))
    encode_bad, decode_bad = [], []
    for text in texts:
        ids = tokenizer.encode(text)
        if auto(text).input_ids != ids:
            encode_bad.append(text)
        if auto.decode(ids, skip_special_tokens=True) != tokenizer.decode(ids, skip_special_tokens=True):
            decode_bad.append(text)
    return encode_bad, decode_bad


def _readme(out: Path, ckpt_path: Any, model: Any, probes: int, encode_bad: list[str], decode_bad: list[str]) -> str:
    folder = str(out)
    codecs = json.dumps(model.hparams.get("codecs") or {}, indent=2, default=str, ensure_ascii=False)
    lines = [
        "# AnyGPT language model", "",
        f"Exported by `anygpt export` from the checkpoint `{Path(os.fspath(ckpt_path)).name}`: the backbone's config "
        "and safetensors weights, its generation config, and the text tokenizer with AnyGPT's added tokens "
        f"({len(model.tokenizer)} tokens; `<eos>` = {model.reply_end_id} ends a reply, `</s>` = "
        f"{model.tokenizer.eos_id}).", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({folder!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        "from anygpt.lm.unified import UnifiedLM   # with media: the checkpoint's codecs, listed below",
        f"lm = UnifiedLM(backbone={folder!r}, codecs=CODECS)",
        "```", "",
        "## Tokenizer", "",
    ]
    if encode_bad:
        lines += [f"**transformers' `AutoTokenizer` does not give AnyGPT's ids** on {len(encode_bad)} of {probes} "
                  "probe texts (the model was trained on the ids of transformers 4.34.1's slow "
                  "`LlamaTokenizer(legacy=True)`). "
                  "Use the tokenizer that reproduces them:", "",
                  f"    from anygpt.lm.tokenizer import TextTokenizer; TextTokenizer.from_pretrained({folder!r})", "",
                  f"First differing text: `{encode_bad[0][:200]!r}`"]
    else:
        lines += [f"`AutoTokenizer` gives the ids the model was trained with (transformers 4.34.1's slow "
                  f"`LlamaTokenizer(legacy=True)` plus the added tokens) on all {probes} probe texts of the export "
                  "(prompts of every task, chat turns, runs of spaces, bytes). Load it with `AutoTokenizer` or "
                  "`PreTrainedTokenizerFast`: `LlamaTokenizer.from_pretrained` rebuilds its own pre-tokenizer and "
                  "gives other ids."]
    if decode_bad:
        lines += ["", f"`decode` gives other strings than 4.34.1 on {len(decode_bad)} of {probes} probes (with "
                  "`skip_special_tokens=True`): recent transformers puts no spaces around added tokens (`<eoh>`, "
                  "`<🗣️12>`, ...). `TextTokenizer.from_pretrained(...).decode` reproduces 4.34.1's strings; parse "
                  "generated ids, not decoded text."]
    lines += ["", "## Codecs (`CODECS`)", "", "```json", codecs, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    """``anygpt export --ckpt_path X --output_dir Y [--max_shard_size 5GB] [--dtype bfloat16]``."""
    parser = argparse.ArgumentParser(prog="anygpt export",
                                     description="Write a fit checkpoint as a Hugging Face folder (config, "
                                                 "safetensors, tokenizer).")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file or distributed-checkpoint folder")
    parser.add_argument("--output_dir", required=True, help="new (or empty) folder to write")
    parser.add_argument("--max_shard_size", default="5GB", help="largest weight file (default 5GB)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="weight dtype (default: the checkpoint's)")
    args = parser.parse_args(argv)
    out = export(args.ckpt_path, args.output_dir, max_shard_size=args.max_shard_size, dtype=args.dtype)
    print(f"anygpt export: wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out
