"""Stage-1 pretraining data: a weighted mixture of AnyGPT-format datasets, packed into blocks.

Each dataset is a list of JSONL files or binary token shards of ``{"text": ..., "<modality>": "<so..>...<eo..>"}``
records with a sampling weight and its own probability of the modality->text direction (the original meant
per-dataset probabilities but passed them to the wrong argument, so every dataset got 0.5 and image generation
lost its ``</s>``). Every sequence ends in ``</s>``; sequences are packed whole into blocks with no attention
across documents. A dataset may also hold chat conversations (``{"conversation": [...]}``, ``anygpt.data.sft``'s
format): they join the mixture in the chat template, with the loss on the assistant turns only.
"""

from __future__ import annotations

import multiprocessing
import random
from functools import partial
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.data.packing import collate_packed, pack_greedy
from anygpt.data.pairs import read_examples
from anygpt.data.resumable import ResumableData, StreamLoader, StreamState
from anygpt.data.sft import conversation_example
from anygpt.data.shards import expand_folders

_FORKED: dict = {}  # what forked readers take from the parent: the data module, the model, the dataset specs


def _read_job(job: tuple[int, str]) -> tuple[list[tuple], list[str]]:
    index, file = job
    return _FORKED["module"]._read(_FORKED["specs"][index], [file], _FORKED["model"])


def _check_specs(specs: list[dict], where: str) -> list[dict]:
    checked = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        unknown = set(spec) - {"files", "weight", "to_text_prob", "name", "code_noise", "text_dropout"}
        if unknown:
            raise AnyGPTError(f"{where}[{i}]: unknown fields {sorted(unknown)} "
                              "(files, weight, to_text_prob, name, code_noise, text_dropout)")
        if not spec.get("files"):
            raise AnyGPTError(f"{where}[{i}]: give its JSONL `files`")
        spec["files"] = expand_folders(list(spec["files"]))
        spec.setdefault("weight", 1.0)
        spec.setdefault("to_text_prob", 0.5)
        spec.setdefault("name", f"{where}{i}")
        spec.setdefault("code_noise", 0.0)
        spec.setdefault("text_dropout", 0.0)
        if spec["weight"] <= 0 or not 0 <= spec["to_text_prob"] <= 1 or not 0 <= spec["code_noise"] < 1 \
                or not 0 <= spec["text_dropout"] < 1:
            raise AnyGPTError(f"{where}[{i}]: weight must be > 0, to_text_prob in [0, 1], code_noise and "
                              f"text_dropout in [0, 1), got {spec}")
        checked.append(spec)
    return checked


class PretrainDataModule(ResumableData, LightningDataModule):
    """Weighted mixture of AnyGPT-format datasets, packed into blocks of ``block_size`` tokens.

    An epoch draws ``examples_per_epoch`` examples: each draw picks a dataset with probability proportional to its
    weight (modality-balanced sampling) and takes that dataset's next example in a seeded shuffled order, starting
    over when it runs out. The examples are then packed whole, in draw order, into blocks. The blocks of epoch 0,
    1, ... form one stream that the processes split step by step (``anygpt.data.resumable``): a fit resumed from a
    checkpoint goes on with the same blocks, on any number of processes that divides the global batch. Validation
    packs every validation example once, in file order.

    Args:
        datasets: Training datasets: ``{files: [...], weight: 1.0, to_text_prob: 0.5, name: ..., code_noise: 0.0}``
            each; files are AnyGPT JSONL or binary token shards (any of a shard's files or its ``NAME``), or folders
            of them. ``code_noise``: share of a to-text example's input codes replaced by random ones, drawn once per
            record with its direction (``UnifiedLM.build_example``). ``text_dropout``: share of from-text examples
            whose text is left out (an empty input), drawn once per record: what classifier-free guidance
            (``GenerationPreset.guidance_scale``) contrasts the text with. A conversation record is one example in
            the chat template (``to_text_prob``, ``code_noise`` and ``text_dropout`` do not apply), its task
            ``chat``.
        val_datasets: Validation datasets, same fields (weight unused).
        block_size: Tokens per block; a longer sequence is cut to it (and then has no ``</s>``).
        batch_size: Blocks per batch and process (global batch: x processes; a resumed fit keeps the checkpoint's
            global batch).
        examples_per_epoch: Draws per epoch; None: as many as the datasets hold together.
        seed: Seed of the directions, instructions, shuffles and draws.
        num_workers: DataLoader workers.
        read_workers: Processes that read and tokenize the dataset files at setup (forked; 0: this process).
    """

    def __init__(self, datasets: list[dict] = [], val_datasets: list[dict] = [], block_size: int = 4096,
                 batch_size: int = 1, examples_per_epoch: int | None = None, seed: int = 42, num_workers: int = 0,
                 read_workers: int = 0):
        super().__init__()
        if block_size < 2 or batch_size < 1:
            raise AnyGPTError(f"block_size must be >= 2 and batch_size >= 1, got {block_size} and {batch_size}")
        self.specs = _check_specs(datasets, "datasets")
        self.val_specs = _check_specs(val_datasets, "val_datasets")
        self.block_size, self.batch_size, self.num_workers = block_size, batch_size, num_workers
        self.examples_per_epoch, self.seed, self.read_workers = examples_per_epoch, seed, read_workers
        self.train_sets: list[list] = []
        self.val_blocks: list = []
        self.problems: list[str] = []
        self.task_names: list[str] = []
        self.stream: StreamState | None = None

    def _read(self, spec: dict, files: list[str], model: Any) -> tuple[list[tuple], list[str]]:
        eos_id, answer_start = model.layout.token_id("<eos>"), model.layout.token_id("[MMGPT]")

        def build(record, rng):
            if "conversation" in record:
                ids, labels = conversation_example(model.tokenizer, record, eos_id, answer_start, self.block_size)
                return ids, labels, "chat"
            return model.build_example(record, rng, max_length=self.block_size, to_text_prob=spec["to_text_prob"],
                                       code_noise=spec["code_noise"], text_dropout=spec["text_dropout"])

        return read_examples(files, build, self.seed)

    def _read_all(self, specs: list[dict], model: Any) -> list[list[tuple]]:
        """Each dataset's examples, its files read in order; with ``read_workers``, files are read in forked
        processes at once (records are seeded by file and line, so the examples are the same)."""
        jobs = [(i, file) for i, spec in enumerate(specs) for file in spec["files"]]
        if self.read_workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
            _FORKED.update(module=self, model=model, specs=specs)
            try:
                with multiprocessing.get_context("fork").Pool(min(self.read_workers, len(jobs))) as pool:
                    results = pool.map(_read_job, jobs, chunksize=1)
            finally:
                _FORKED.clear()
        else:
            results = [self._read(specs[i], [file], model) for i, file in jobs]
        per_spec: list[list[tuple]] = [[] for _ in specs]
        for (i, _), (examples, problems) in zip(jobs, results):
            per_spec[i] += examples
            self.problems += problems
        return per_spec

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module
        self.pad_id = model.tokenizer.pad_id
        if stage == "fit":
            if not self.specs:
                raise AnyGPTError("data.datasets is empty: fit needs at least one dataset")
            self.train_sets = self._read_all(self.specs, model)
            empty = [spec["name"] for spec, data in zip(self.specs, self.train_sets) if not data]
            if empty:
                raise AnyGPTError(f"no usable records in datasets {empty}")
            self.stream = StreamState([f for spec in self.specs for f in spec["files"]], self.stream_settings())
        if stage in ("fit", "validate"):
            if stage == "validate" and not self.val_specs:
                raise AnyGPTError("data.val_datasets is empty: validate needs at least one dataset")
            examples = [ex for data in self._read_all(self.val_specs, model) for ex in data]
            self.val_blocks = [[examples[i] for i in block]
                               for block in pack_greedy([len(ex[0]) for ex in examples], self.block_size)]
        tasks = {ex[-1] for data in self.train_sets for ex in data}
        tasks |= {ex[-1] for block in self.val_blocks for ex in block}
        self.task_names = sorted(tasks)

    def stream_settings(self) -> dict:
        """What shapes the training stream besides its files, as a resumed fit must find it again (``code_noise``
        and ``text_dropout`` only where they are used, so checkpoints from before them resume)."""
        keys = ("name", "weight", "to_text_prob")
        datasets = [{**{k: spec[k] for k in keys}, **{k: spec[k] for k in ("code_noise", "text_dropout") if spec[k]}}
                    for spec in self.specs]
        return {"seed": self.seed, "block_size": self.block_size, "examples_per_epoch": self.examples_per_epoch,
                "datasets": datasets}

    def train_blocks(self, epoch: int) -> list[list[tuple]]:
        """The packed blocks of one epoch (a deterministic function of ``seed`` and ``epoch``)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        orders = [rng.sample(range(len(data)), len(data)) for data in self.train_sets]
        cursors = [0] * len(self.train_sets)
        weights = [spec["weight"] for spec in self.specs]
        total = self.examples_per_epoch or sum(len(data) for data in self.train_sets)
        drawn = []
        for which in rng.choices(range(len(self.train_sets)), weights=weights, k=total):
            data, order = self.train_sets[which], orders[which]
            drawn.append(data[order[cursors[which] % len(data)]])
            cursors[which] += 1
        return [[drawn[i] for i in block] for block in pack_greedy([len(ex[0]) for ex in drawn], self.block_size)]

    def _loader(self, blocks: list, shuffle: bool) -> DataLoader:
        collate = partial(collate_packed, task_names=self.task_names, pad_id=self.pad_id)
        return DataLoader(blocks, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate)

    def train_dataloader(self) -> StreamLoader:
        collate = partial(collate_packed, task_names=self.task_names, pad_id=self.pad_id)
        return StreamLoader(self.train_blocks, collate, self.batch_size, self.trainer, self.stream, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_blocks, shuffle=False)
