"""The released model's text tokenization: SentencePiece plus a table of added tokens, no transformers needed.

AnyGPT was trained with transformers 4.34.1's slow ``LlamaTokenizer`` (``legacy=True``) plus the AnyGPT tokens
added as plain tokens. ``TextTokenizer`` reproduces its ids and decode strings exactly (the recipe of
``fixtures/prompts/public/README.md``): split the text on the added tokens, leftmost and longest match first,
SentencePiece-encode every other chunk on its own (each gets the dummy-prefix ``▁``), prepend ``<s>``.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from anygpt import AnyGPTError
from anygpt.hub import WeightsNotFoundError, resolve

_CODE_TOKEN = re.compile(r"<([^0-9<>]+?)[0-9]+>")  # <👀12>, <🗣️7>: looked up in a dict, not put in the regex
_SUBJECTS = ["A grey heron", "An old fisherman", "Two children", "A sleepy tabby cat", "The city skyline",
             "A quiet mountain lake", "A golden retriever", "Three birds", "A street musician", "The night market"]
_ACTIONS = ["waiting by the river in autumn", "walking along the beach at sunset", "playing in the snow",
            "sitting on a bench near the old library", "glowing with lights after the rain",
            "reflecting the pine trees at dawn", "running across a green field", "resting on a fence at 7:45",
            "playing a slow jazz tune on the corner", "crowded with people and food stalls"]
_LINES = [
    "Describe this picture in one sentence.", "What do you see in this image?",
    "Please read the following text out loud.", "Transcribe the speech into text.",
    "Write a short caption for this photo.", "Compose a calm piano melody for a rainy evening.",
    "An upbeat folk song at 96 bpm with a banjo, hand claps and a warm choir.",
    "Tell me how this song makes you feel and why.", "Can you turn this sentence into speech?",
    "The old clock in the hall struck twelve while the snow kept falling outside.",
    "The weather today is sunny with a light breeze from the west.", "Meet at 6:30 by gate 12, floor 3.",
    "Answer : yes.  Reason : the light is on.", "Name : Alice  Age : 31  City : Paris",
    "Question : what is this?  Answer : a bicycle leaning on a wall.",
    "Title : Morning  Genre : ambient  Tempo : 80", "Note :  keep the    spacing    as it is.",
    "  Two leading spaces, then text.", "Trailing spaces stay here.   ", "Columns    are    aligned    with    spaces.",
    "Hello, how are you doing this morning?", "Thank you, that was a wonderful story!",
    "Generate an image of a lighthouse on a rocky coast.", "Say it with a happy and excited voice.",
    "Turn on the kitchen lights and play some music.", "The quick brown fox jumps over the lazy dog.",
    "In 2024 the orchestra played 12 concerts in 9 cities.", "Step 1 : open the box.  Step 2 : read the note.",
]


_TEMPLATES = ("{s} {a}.", "Caption : {s} {a}", "{s}  {a}  , in {i} words : fine")


def _corpus() -> list[str]:
    """128 English lines: hand-written ones, then generated captions with ``' : '`` and double spaces."""
    pairs = enumerate(itertools.product(_SUBJECTS, _ACTIONS))
    return _LINES + [_TEMPLATES[i % 3].format(s=s if i % 3 != 1 else s.lower(), a=a, i=i) for i, (s, a) in pairs]


@functools.lru_cache(maxsize=4)
def _train_tiny(vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=0.99995, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True,
        treat_whitespace_as_suffix=False, max_sentencepiece_length=16, max_sentence_length=4192,
        hard_vocab_limit=True, use_all_vocab=False, vocabulary_output_piece_score=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, unk_surface=" \u2047 ", shuffle_input_sentence=True, num_threads=1,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False, minloglevel=2)
    return model.getvalue()


class TextTokenizer:
    """SentencePiece + added tokens, encoding and decoding exactly as transformers 4.34.1's slow LlamaTokenizer.

    Args:
        sp_model: The SentencePiece model: its bytes, or the path of a ``tokenizer.model`` file.
        added_tokens: Added (non-special) tokens and their ids, all at or after the SentencePiece pieces.

    Raises:
        AnyGPTError: The model cannot be read, or an added token clashes with a piece or another token.
    """

    def __init__(self, sp_model: bytes | str | Path, added_tokens: dict[str, int] | None = None):
        self._sp = spm.SentencePieceProcessor()
        try:
            data = sp_model if isinstance(sp_model, bytes) else Path(sp_model).read_bytes()
            self._sp.load_from_serialized_proto(data)
        except Exception as err:
            where = "" if isinstance(sp_model, bytes) else f" {sp_model}"
            raise AnyGPTError(f"cannot read the SentencePiece model{where} ({type(err).__name__}: {err})") from None
        self._model = data
        self._specials = {self._sp.id_to_piece(i): i for i in (self.unk_id, self.bos_id, self.eos_id)}
        self._added: dict[str, int] = {}
        self._added_by_id: dict[int, str] = {}
        self._regex, self._next_id = None, self.sp_size
        for token, i in sorted((added_tokens or {}).items(), key=lambda item: item[1]):
            self._add(token, int(i))

    def _add(self, token: str, i: int) -> None:
        if not token or i < self.sp_size or token in self._added or i in self._added_by_id:
            raise AnyGPTError(f"added token {token!r} -> {i} clashes with the vocabulary (a piece or a duplicate)")
        self._added[token], self._added_by_id[i] = i, token
        self._next_id, self._regex = max(self._next_id, i + 1), None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load a tokenizer folder (or HF repo id) as transformers saves it.

        Reads ``tokenizer.model`` and the added tokens of ``added_tokens.json`` and/or the ``added_tokens_decoder``
        of ``tokenizer_config.json``; where both list a token, the ids must agree. ``path`` may also be the
        ``tokenizer.model`` file itself.
        """
        local = Path(os.fspath(path)).expanduser()
        model = local if local.is_file() else resolve(path, "tokenizer.model")
        tok, merged, by_id = cls(model), {}, {}
        for name in ("added_tokens.json", "tokenizer_config.json"):
            file = model.parent / name
            try:
                file = file if file.exists() or local.exists() else resolve(path, name)
            except WeightsNotFoundError:
                continue
            if not file.exists():
                continue
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                if name == "tokenizer_config.json":
                    data = {v["content"]: k for k, v in data.get("added_tokens_decoder", {}).items()}
                for token, i in data.items():
                    if merged.setdefault(str(token), int(i)) != int(i) or by_id.setdefault(int(i), token) != token:
                        raise AnyGPTError(f"{token!r} -> {i} conflicts with another added-token entry")
            except (ValueError, TypeError, KeyError, AttributeError, AnyGPTError) as err:
                raise AnyGPTError(f"cannot read the added tokens of {file} ({type(err).__name__}: {err})") from None
        for token, i in sorted(merged.items(), key=lambda item: item[1]):
            if i >= tok.sp_size:
                tok._add(token, i)
            elif tok.id_to_piece(i) != token:
                raise AnyGPTError(f"{path}: added token {token!r} has the id {i} of the piece {tok.id_to_piece(i)!r}")
        return tok

    @classmethod
    def tiny(cls, vocab_size: int = 400) -> TextTokenizer:
        """A small BPE model trained (deterministically, in memory) with LLaMA-2's settings; no added tokens."""
        return cls(_train_tiny(vocab_size))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the folder that ``from_pretrained`` and transformers (``LlamaTokenizer``) both read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self._model)
        dump = functools.partial(json.dumps, ensure_ascii=False)
        (folder / "added_tokens.json").write_text(dump(self._added, indent=2, sort_keys=True), encoding="utf-8")
        special = {"content": None, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        names = {"bos_token": self.bos_id, "eos_token": self.eos_id, "unk_token": self.unk_id}
        tokens_map = {k: {**special, "content": self.id_to_piece(i)} for k, i in names.items()}
        tokens_map["pad_token"] = self.id_to_piece(self.pad_id)
        (folder / "special_tokens_map.json").write_text(dump(tokens_map, indent=2), encoding="utf-8")
        decoder = {str(i): {"content": t, "normalized": False, "special": True} for t, i in self._specials.items()}
        decoder.update({str(i): {"content": t, "normalized": True, "special": False} for t, i in self._added.items()})
        config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
                  "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 4096,
                  "padding_side": "left", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
                  "use_fast": False, **{k: v["content"] for k, v in tokens_map.items() if isinstance(v, dict)},
                  "pad_token": tokens_map["pad_token"]}
        (folder / "tokenizer_config.json").write_text(dump(config), encoding="utf-8")
        return folder

    # --- vocabulary ---

    unk_id = property(lambda self: self._sp.unk_id(), doc="Id of ``<unk>`` (0 in LLaMA-2).")
    bos_id = property(lambda self: self._sp.bos_id(), doc="Id of ``<s>`` (1 in LLaMA-2).")
    eos_id = property(lambda self: self._sp.eos_id(), doc="Id of ``</s>`` (2 in LLaMA-2).")
    pad_id = property(lambda self: 0, doc="0 (``<unk>``), as the original CLIs and training scripts set it.")
    sp_size = property(lambda self: self._sp.get_piece_size(), doc="Number of SentencePiece pieces.")

    @property
    def space_id(self) -> int | None:
        """Id of the lone ``▁`` piece, None if the model has none."""
        i = self._sp.piece_to_id("\u2581")
        return None if i == self.unk_id else i

    def __len__(self) -> int:
        return self.sp_size + len(self._added)  # added ids are distinct and >= sp_size

    def get_vocab(self) -> dict[str, int]:
        """Every piece and added token with its id."""
        vocab = {self._sp.id_to_piece(i): i for i in range(self.sp_size)}
        vocab.update(self._added)
        return vocab

    def id_to_piece(self, i: int) -> str:
        """The added token or SentencePiece piece of an id."""
        i = int(i)
        if i in self._added_by_id:
            return self._added_by_id[i]
        if not 0 <= i < self.sp_size:
            raise AnyGPTError(f"id {i} is outside the vocabulary (0..{len(self) - 1})")
        return self._sp.id_to_piece(i)

    def add_tokens(self, tokens: list[str]) -> int:
        """Append plain added tokens at the next ids, skipping those already in the vocabulary; returns how many."""
        vocab, added = self.get_vocab(), 0
        for token in tokens:
            if token not in vocab and token not in self._added:
                self._add(token, self._next_id)
                added += 1
        return added

    # --- encode / decode ---

    def _patterns(self) -> tuple[re.Pattern, re.Pattern | None, dict[str, int]]:
        if self._regex is None:
            table = {**self._specials, **self._added}
            codes = {t for t in self._added if _CODE_TOKEN.fullmatch(t)}
            prefixes = sorted({_CODE_TOKEN.fullmatch(t).group(1) for t in codes}, key=len, reverse=True)
            plain = sorted((t for t in table if t not in codes), key=len, reverse=True)
            plain_re = "|".join(map(re.escape, plain)) or "(?!)"
            code_re = f"<(?:{'|'.join(map(re.escape, prefixes))})[0-9]+>" if prefixes else "(?!)"
            self._regex = (re.compile(f"(?P<code>{code_re})|(?P<plain>{plain_re})"), re.compile(plain_re), table,
                           re.compile(f"(?:{plain_re})(?:{code_re})+(?:{plain_re})"))
        return self._regex

    def _split(self, text: str, keep: Sequence[tuple[int, int]] = ()) -> list[str | int]:
        """Text chunks and added-token ids, as 4.34.1's added-token trie splits (leftmost, then longest); a token
        string that overlaps a ``keep`` range stays text."""
        both, plain, table, _ = self._patterns()
        out: list[str | int] = []
        start = pos = 0
        while (m := both.search(text, pos)) is not None:
            candidates = [m.group()] if m.group() in table else []
            if m.lastgroup == "code" and (p := plain.match(text, m.start())):
                candidates.append(p.group())
            if not candidates:
                pos = m.start() + 1
                continue
            token = max(candidates, key=len)
            if any(a < m.start() + len(token) and m.start() < b for a, b in keep):
                pos = m.start() + 1
                continue
            if m.start() > start:
                out.append(text[start:m.start()])
            out.append(table[token])
            start = pos = m.start() + len(token)
        if start < len(text):
            out.append(text[start:])
        return out

    def encode(self, text: str, bos: bool = True, plain: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Ids of ``text`` (which may contain added-token strings), with ``<s>`` first when ``bos``.

        Args:
            text: The text.
            bos: Start with ``<s>``.
            plain: Character ranges of ``text`` that came from a user (``encode_template``, ``outside_media``): an
                added-token string there is encoded as text, never as its control id. Text without such strings
                gets the same ids either way.
        """
        ids = [self.bos_id] if bos else []
        for part in self._split(text, plain):
            ids.extend([part] if isinstance(part, int) else self._sp.encode(part))
        return ids

    def encode_template(self, template: str, bos: bool = True, **fields: str) -> list[int]:
        """Ids of ``template`` with its ``{name}`` fields filled by user text, which stays text even where it spells
        a tag (see ``encode``'s ``plain``); a value with a ``plain`` attribute (ranges within itself) is plain text
        only there. Without tags in the values, the ids equal ``encode(template.format(**fields))``."""
        out, plain, pos = [], [], 0
        for literal, name, _, _ in string.Formatter().parse(template):
            out.append(literal)
            pos += len(literal)
            if name is not None:
                value = fields[name]
                ranges = getattr(value, "plain", None)
                plain += [(pos, pos + len(value))] if ranges is None else [(pos + a, pos + b) for a, b in ranges]
                out.append(str(value))
                pos += len(value)
        return self.encode("".join(out), bos=bos, plain=plain)

    def outside_media(self, text: str, offset: int = 0, markers: Sequence[str] = ()) -> list[tuple[int, int]]:
        """Ranges of ``text`` (shifted by ``offset``) outside its complete media spans (a start tag, codes, an end
        tag: ``<sosp><🗣️12>...<eosp>``) and outside the data ``markers`` (AnyInstruct's ``<-Ins->``): the parts of a
        data message to encode as plain text."""
        spans = self._patterns()[3]
        if markers:
            spans = re.compile("|".join([spans.pattern, *map(re.escape, markers)]))
        ranges, start = [], 0
        for m in spans.finditer(text):
            if m.start() > start:
                ranges.append((offset + start, offset + m.start()))
            start = m.end()
        if start < len(text):
            ranges.append((offset + start, offset + len(text)))
        return ranges

    def _run_to_string(self, pieces: list[str]) -> str:
        """Legacy ``LlamaTokenizer.convert_tokens_to_string`` of 4.34.1."""
        if pieces[0].startswith("\u2581"):
            pieces[0] = pieces[0][1:]
        out, current, prev_special = "", [], False
        for i, piece in enumerate(pieces):
            if piece in self._specials:
                out += (" " if not prev_special and i != 0 else "") + self._sp.decode(current) + piece
                current, prev_special = [], True
            else:
                current.append(piece)
                prev_special = False
        return out + self._sp.decode(current)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """4.34.1's ``decode``: added tokens and decoded runs of pieces, joined by single spaces.

        A run of SentencePiece ids loses its leading ``▁``; a run before an added token that decodes to nothing is
        dropped (a final one is not). ``skip_special_tokens`` drops only ``<s>``, ``</s>`` and ``<unk>``.
        """
        skip = set(self._specials.values()) if skip_special_tokens else set()
        parts, run = [], []
        for i in ids:
            i = int(i)
            if i in skip:
                continue
            if i in self._added_by_id:
                if run and (text := self._run_to_string(run)):
                    parts.append(text)
                run = []
                parts.append(self._added_by_id[i])
            else:
                run.append(self.id_to_piece(i))
        if run:
            parts.append(self._run_to_string(run))
        return " ".join(parts)
