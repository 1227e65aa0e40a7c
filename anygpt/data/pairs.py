"""Paired text/modality data in the AnyGPT JSONL format, for ``anygpt fit`` and ``anygpt validate``.

Each line is ``{"text": "...", "music": "<somu><🎶12>...<eomu>"}`` (pipeline §5.1): a caption plus one modality
given as its token string. The model turns each record into a base-template sequence, x->text or text->x.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.data.resumable import ResumableData, StreamLoader, StreamState, shuffled_epochs
from anygpt.data.shards import expand_folders

log = logging.getLogger(__name__)


def _records(path: Path):
    """``(line or record number, record or the error it raised)`` per record of a JSONL file or binary shard."""
    from anygpt.data.shards import BinaryShard, json_lines, shard_stem, token_string

    stem = shard_stem(path)
    if path.suffix != ".jsonl" and stem.with_name(stem.name + ".meta.json").is_file():
        shard = BinaryShard(stem)
        tags = [shard.meta[key] for key in ("token_prefix", "start_tag", "end_tag")]
        for number, (codes, text) in enumerate(shard, start=1):
            yield number, {"text": text, shard.meta["modality"]: token_string(codes, *tags)}
        return
    if not path.is_file():
        raise AnyGPTError(f"data file not found: {path}")
    for number, record in json_lines(path):
        yield number, record if isinstance(record, (dict, AnyGPTError)) else AnyGPTError("not a JSON object")


def read_examples(files: list[str], build, seed: int) -> tuple[list[tuple[list[int], str]], list[str]]:
    """Build ``(ids, task)`` examples with ``build(record, rng)`` from JSONL files or binary token shards.

    A binary shard (``anygpt.data.shards``) is named by any of its files or its ``NAME``; its records are read
    from the memory-mapped codes as if they were AnyGPT JSONL records.

    Returns the examples and one ``file:line: reason`` message per malformed record (skipped, never fatal).
    """
    examples, problems = [], []
    for file in files:
        path = Path(file)
        for number, record in _records(path):
            rng = random.Random(f"{seed}:{path.name}:{number}")
            try:
                if isinstance(record, Exception):
                    raise record
                examples.append(build(record, rng))
            except (ValueError, AnyGPTError) as err:
                problems.append(f"{path}:{number}: {err}")
    for problem in problems[:20]:
        log.warning("skipped %s", problem)
    if len(problems) > 20:
        log.warning("skipped %d more malformed records", len(problems) - 20)
    return examples, problems


def collate_labelled(batch: list[tuple[list[int], list[int], str]], pad_id: int = 0) -> dict:
    """Right-pad ``(ids, labels, task)`` examples; labels are -100 on padding."""
    width = max(len(ids) for ids, _, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        labels[row, : len(ids)] = torch.as_tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "task": [task for _, _, task in batch]}


def collate_examples(batch: list[tuple[list[int], str]], pad_id: int = 0) -> dict:
    """Right-pad a batch; labels are the ids (loss on every token) and -100 on padding."""
    return collate_labelled([(ids, ids, task) for ids, task in batch], pad_id)


class PairedJsonlDataModule(ResumableData, LightningDataModule):
    """Trains and validates on AnyGPT-format JSONL pairs (text + one modality token string per line).

    The direction of each example (modality->text or text->modality) is drawn with ``to_text_prob`` from a
    generator seeded by ``seed``, file and line, so a rerun builds the same sequences. Malformed lines are
    skipped with a warning naming the file and line.

    Args:
        train_files: JSONL files or token shards for ``fit``; a folder stands for the shards in it.
        val_files: JSONL files for validation (``fit`` and ``validate``).
        batch_size: Sequences per batch and process (a resumed fit keeps the checkpoint's global batch).
        max_length: Longest sequence; longer ones are cut (and then get no ``</s>``).
        to_text_prob: Probability of the modality->text direction.
        seed: Seed of the direction and instruction draws and of the training order (new every epoch).
        num_workers: DataLoader workers.
    """

    def __init__(self, train_files: list[str] = [], val_files: list[str] = [], batch_size: int = 1,
                 max_length: int = 4096, to_text_prob: float = 0.5, seed: int = 42, num_workers: int = 0):
        super().__init__()
        if not 0 <= to_text_prob <= 1:
            raise AnyGPTError(f"to_text_prob must lie in [0, 1], got {to_text_prob}")
        self.train_files, self.val_files = expand_folders(list(train_files)), expand_folders(list(val_files))
        self.batch_size, self.max_length, self.num_workers = batch_size, max_length, num_workers
        self.to_text_prob, self.seed = to_text_prob, seed
        self.train, self.val, self.problems = [], [], []
        self.stream: StreamState | None = None

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module

        def build(record, rng):
            return model.build_example(record, rng, max_length=self.max_length, to_text_prob=self.to_text_prob)

        if stage == "fit" and not self.train_files:
            raise AnyGPTError("data.train_files is empty: fit needs at least one JSONL file")
        if stage == "validate" and not self.val_files:
            raise AnyGPTError("data.val_files is empty: validate needs at least one JSONL file")
        self.pad_id = model.tokenizer.pad_id
        if stage == "fit":
            self.train, bad = read_examples(self.train_files, build, self.seed)
            self.problems += bad
            if not self.train:
                raise AnyGPTError(f"no usable records in {self.train_files} ({len(bad)} malformed)")
            self.stream = StreamState(self.train_files, {"seed": self.seed, "max_length": self.max_length,
                                                         "to_text_prob": self.to_text_prob})
        self.val, bad = read_examples(self.val_files, build, self.seed)
        self.problems += bad

    def train_dataloader(self) -> StreamLoader:
        return StreamLoader(shuffled_epochs(self.train, self.seed), partial(collate_examples, pad_id=self.pad_id),
                            self.batch_size, self.trainer, self.stream, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=partial(collate_examples, pad_id=self.pad_id))
