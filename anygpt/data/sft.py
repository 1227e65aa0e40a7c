"""Instruction tuning on AnyInstruct-style conversations, loss on the assistant turns only.

A record is ``{"conversation": [[{"role": "user" | "assistant", "message": ...}, ...]]}`` (the original's files
nest the turn list twice; a single list is accepted too). Messages may hold media as token strings
(``<sosp><🗣️12>...<eosp>``) and AnyInstruct's ``<-Ins->`` / ``<-Res->`` markers, which the model must know
(``UnifiedLM(added_tokens=["<-Res->", "<-Ins->"])``). Turns follow the template the released chat model answers
to (pipeline §3.5): a system line, then ``[Human]: {user}<eoh>\\n[MMGPT]: {assistant}<eos>\\n`` per exchange.
Labels cover each assistant answer (from after ``[MMGPT]`` to its ``<eos>``, inclusive) and the final ``</s>``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.data.pairs import collate_labelled, read_examples
from anygpt.data.resumable import ResumableData, StreamLoader, StreamState, shuffled_epochs

MARKERS = ("<-Ins->", "<-Res->")  # AnyInstruct's data markers: tokens in a message, unlike typed tags
SYSTEM = ("You are an AI assistant named MMGPT who can understand and generate multimodal content, including text, "
          "speech, images and audio.")


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a record, checked: alternating roles starting with the user, no empty message."""
    turns = record.get("conversation")
    if isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], list):
        turns = turns[0]  # the original's doubly nested list
    if not isinstance(turns, list) or not turns:
        raise AnyGPTError("record has no conversation (a list of {role, message} turns)")
    pairs, user = [], None
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("message"), str) or not turn["message"].strip():
            raise AnyGPTError(f"turn {number} needs a non-empty string message")
        role = turn.get("role")
        if role == "user" and user is None:
            user = turn["message"]
        elif role == "assistant" and user is not None:
            pairs.append((user, turn["message"]))
            user = None
        else:
            raise AnyGPTError(f"turn {number} has role {role!r}; roles must alternate user, assistant")
    if not pairs:
        raise AnyGPTError("conversation has no assistant turn")
    return pairs


def conversation_example(tokenizer: Any, record: dict, eos_id: int, answer_start_id: int, max_length: int,
                         system: str = SYSTEM) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside the assistant answers) of one conversation, ``</s>`` last."""
    pairs = conversation_turns(record)
    text, plain = system, []
    for user, answer in pairs:  # messages are plain text around their media spans and markers
        for part, is_message in (("\n[Human]: ", False), (user, True), ("<eoh>\n[MMGPT]: ", False), (answer, True),
                                 ("<eos>", False)):
            if is_message:
                plain += tokenizer.outside_media(part, len(text), MARKERS)
            text += part
    ids = tokenizer.encode(text, bos=True, plain=plain) + [tokenizer.eos_id]
    labels, answering = [-100] * len(ids), False
    for i, token in enumerate(ids):
        if answering:
            labels[i] = token
            answering = token != eos_id
        elif token == answer_start_id:
            answering = True
    labels[-1] = ids[-1]
    if ids.count(answer_start_id) != len(pairs) or ids.count(eos_id) != len(pairs):
        raise AnyGPTError("a message holds [MMGPT] or <eos> itself: the turns cannot be told apart")
    return ids[:max_length], labels[:max_length]


class SFTDataModule(ResumableData, LightningDataModule):
    """AnyInstruct-style conversations for ``fit`` / ``validate``; loss on assistant turns only.

    Malformed lines (bad JSON, roles out of order, empty messages, unknown media tokens) are skipped with a warning
    naming the file and line. The task of an example (for per-task validation loss) is ``sft``.

    Args:
        train_files: JSONL files for ``fit``.
        val_files: JSONL files for validation.
        batch_size: Conversations per batch and process (a resumed fit keeps the checkpoint's global batch).
        max_length: Longest sequence; longer ones are cut.
        system: The system line that opens every conversation.
        seed: Seed of the shuffle (a new order every epoch; a resumed fit goes on with the same batches).
        num_workers: DataLoader workers.
    """

    def __init__(self, train_files: list[str] = [], val_files: list[str] = [], batch_size: int = 1,
                 max_length: int = 4096, system: str = SYSTEM, seed: int = 42, num_workers: int = 0):
        super().__init__()
        self.train_files, self.val_files = list(train_files), list(val_files)
        self.batch_size, self.max_length, self.system = batch_size, max_length, system
        self.seed, self.num_workers = seed, num_workers
        self.train, self.val, self.problems = [], [], []
        self.stream: StreamState | None = None

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module
        tokenizer, self.pad_id = model.tokenizer, model.tokenizer.pad_id
        eos_id, answer_start = model.layout.token_id("<eos>"), model.layout.token_id("[MMGPT]")

        def build(record, rng):
            ids, labels = conversation_example(tokenizer, record, eos_id, answer_start, self.max_length, self.system)
            for token in ids:  # media tokens must belong to the model's vocabulary
                if token >= len(model.layout):
                    raise AnyGPTError(f"token id {token} is outside the model's vocabulary")
            return ids, labels, "sft"

        if stage == "fit":
            if not self.train_files:
                raise AnyGPTError("data.train_files is empty: fit needs at least one JSONL file")
            self.train, bad = read_examples(self.train_files, build, self.seed)
            self.problems += bad
            if not self.train:
                raise AnyGPTError(f"no usable conversations in {self.train_files} ({len(bad)} malformed)")
            self.stream = StreamState(self.train_files, {"seed": self.seed, "max_length": self.max_length,
                                                         "system": self.system})
        if stage == "validate" and not self.val_files:
            raise AnyGPTError("data.val_files is empty: validate needs at least one JSONL file")
        self.val, bad = read_examples(self.val_files, build, self.seed)
        self.problems += bad

    def train_dataloader(self) -> StreamLoader:
        return StreamLoader(shuffled_epochs(self.train, self.seed), partial(collate_labelled, pad_id=self.pad_id),
                            self.batch_size, self.trainer, self.stream, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=partial(collate_labelled, pad_id=self.pad_id))
