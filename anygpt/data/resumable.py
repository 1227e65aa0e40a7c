"""Training batches that resume exactly: a position in a deterministic stream, saved in every checkpoint.

The training data of a fit is one stream of items (packed blocks, conversations or pairs): data epoch 0's items in
their seeded order, then data epoch 1's, and so on, each a pure function of the seed and the epoch number. Step
``n`` of the run trains on stream items ``[n * G, (n + 1) * G)``, where ``G`` is the global batch (per-process batch
x processes); process ``r`` takes its ``r``-th slice of them. A Lightning epoch is a fixed number of steps
(``len(data epoch 0) // G``), and the stream runs on across epochs, so no item is skipped or repeated.

A checkpoint therefore needs only the step reached and the stream's definition: ``StreamLoader`` saves the step
(Lightning stores it with the loops), ``StreamState`` the global batch, the seed and a fingerprint of the data files
(the data module's state). Resuming on the same number of processes replays the same batches; on another number
``M``, the per-process batch becomes ``G / M`` so every step still trains on the same items.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from anygpt import AnyGPTError

log = logging.getLogger(__name__)


def file_fingerprint(path: str | Path) -> str:
    """Size and a hash of the first and last MiB of a file (or of each file of a binary shard's stem)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.parent.glob(path.name + ".*"))
    digest = hashlib.sha1()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(size - (1 << 20))
                digest.update(handle.read())
    return digest.hexdigest()[:16]


class StreamState:
    """What a data module saves so that a resumed fit sees the same stream: the global batch and the data's identity.

    Args:
        files: The training data files, in order (their fingerprints are saved).
        settings: Every argument that shapes the stream (seed, block size, mixture, ...).
    """

    def __init__(self, files: Sequence[str], settings: dict):
        self.files, self.settings = [str(f) for f in files], dict(settings)
        self.fingerprints = {f: file_fingerprint(f) for f in dict.fromkeys(self.files)}
        self.global_batch: int | None = None  # set by the loader of this run, or by a checkpoint

    def state_dict(self) -> dict:
        return {"global_batch": self.global_batch, "fingerprints": self.fingerprints, "settings": self.settings}

    def load_state_dict(self, state: dict) -> None:
        """Check that the checkpoint's stream is this one, and keep its global batch.

        Raises:
            AnyGPTError: A data file or a stream setting changed since the checkpoint was written.
        """
        saved = state.get("fingerprints", {})
        if list(saved) != list(self.fingerprints):
            raise AnyGPTError(f"resume: the training files changed since the checkpoint: it was trained on "
                              f"{list(saved)}, this run reads {list(self.fingerprints)}")
        changed = [f for f, mark in saved.items() if self.fingerprints[f] != mark]
        if changed:
            raise AnyGPTError(f"resume: data file {changed[0]} changed since the checkpoint (its content differs); "
                              "resume with the same data, or start a new run without --ckpt_path")
        for key, value in state.get("settings", {}).items():
            if self.settings.get(key) != value:
                raise AnyGPTError(f"resume: data setting {key} was {value!r} in the checkpoint, now "
                                  f"{self.settings.get(key)!r}; a resumed run must read the same stream")
        self.global_batch = state.get("global_batch")


class _Batches(Dataset):
    def __init__(self, batches: list[list]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list:
        return self.batches[index]


class StreamLoader:
    """The training loader of a fit: this process's batches of the stream, from the step the run has reached.

    Lightning treats it as a stateful loader: its ``state_dict`` (the epoch and the steps done in it) goes into
    checkpoints, and ``load_state_dict`` makes the next epoch's iteration start where the checkpoint stopped.

    Args:
        items_of_epoch: Data epoch number -> that epoch's items in order (a pure function of it).
        collate: Items of one batch -> the batch.
        batch_size: Items per process and step.
        trainer: The Trainer (for the process rank, the world size and the epoch being run).
        state: The data module's ``StreamState`` (its global batch, when restored from a checkpoint, wins).
        num_workers: Processes that collate batches.
    """

    def __init__(self, items_of_epoch: Callable[[int], Sequence], collate: Callable[[list], Any], batch_size: int,
                 trainer: Any, state: StreamState, num_workers: int = 0):
        self.items_of_epoch, self.collate, self.num_workers = items_of_epoch, collate, num_workers
        self.trainer, self.rank, world = trainer, trainer.global_rank, trainer.world_size
        if state.global_batch is not None and state.global_batch != batch_size * world:
            if state.global_batch % world:
                raise AnyGPTError(f"resume: the checkpoint's global batch of {state.global_batch} cannot be split "
                                  f"over {world} processes")
            log.info("keeping the checkpoint's global batch of %d: %d per process", state.global_batch,
                     state.global_batch // world)
            batch_size = state.global_batch // world
        self.batch_size, self.global_batch = batch_size, batch_size * world
        state.global_batch = self.global_batch
        self._epochs: dict[int, Sequence] = {}
        self._starts = [0]  # stream index of the first item of data epoch k
        self.steps_per_epoch = len(self._epoch(0)) // self.global_batch
        if self.steps_per_epoch == 0:
            raise AnyGPTError(f"the training data give {len(self._epoch(0))} items per epoch, fewer than one global "
                              f"batch of {self.global_batch} ({batch_size} x {world} processes)")
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _epoch(self, k: int) -> Sequence:
        if k not in self._epochs:
            self._epochs = {e: items for e, items in self._epochs.items() if e >= k - 1}
            self._epochs[k] = self.items_of_epoch(k)
        return self._epochs[k]

    def _items(self, start: int, count: int) -> list:
        """Stream items ``[start, start + count)``."""
        while len(self._starts) < 2 or self._starts[-1] <= start + count:
            k = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self._epoch(k)))
        out, k = [], 0
        while len(out) < count:
            while self._starts[k + 1] <= start + len(out):
                k += 1
            offset = start + len(out) - self._starts[k]
            out += list(self._epoch(k)[offset:offset + count - len(out)])
        return out

    def batches(self, first_step: int, last_step: int) -> list[list]:
        """This process's items of steps ``[first_step, last_step)``."""
        return [self._items(step * self.global_batch + self.rank * self.batch_size, self.batch_size)
                for step in range(first_step, last_step)]

    def __iter__(self):
        epoch, skip = self.trainer.current_epoch, 0
        if self._resume is not None:
            saved_epoch, done = self._resume
            self._resume = None
            if saved_epoch == epoch:
                skip = done
        first = epoch * self.steps_per_epoch
        batches = self.batches(first + skip, first + self.steps_per_epoch)
        loader = DataLoader(_Batches(batches), batch_size=None, collate_fn=self.collate, num_workers=self.num_workers)
        yield from loader

    def state_dict(self) -> dict:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "steps_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (state["epoch"], state["steps_done"])


def shuffled_epochs(items: Sequence, seed: int) -> Callable[[int], list]:
    """Data epoch k -> ``items`` in a seeded order of their own (a new permutation per epoch)."""

    def epoch(k: int) -> list:
        order = random.Random(f"{seed}:{k}").sample(range(len(items)), len(items))
        return [items[i] for i in order]

    return epoch


class ResumableData:
    """Mixin of the training data modules: their ``StreamState`` is saved in checkpoints and checked on resume."""

    stream: StreamState | None = None

    def state_dict(self) -> dict:
        return self.stream.state_dict() if self.stream is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stream is not None:  # fitting; `validate --ckpt_path` does not read the training stream
            self.stream.load_state_dict(state)
