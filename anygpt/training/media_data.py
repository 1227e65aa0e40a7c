"""Media for codec training: fixed-length random audio clips from a manifest or a folder.

The manifest is ``anygpt tokenize``'s (a JSONL file of ``{"path", ...}`` records or a folder of media); captions are
not needed, and other fields of a record (phoneme timings, say) reach the batch. Files that cannot be read are
skipped at setup, each named in a warning and counted in ``skipped``. Training clips start at a seeded random
offset (shorter files are zero-padded, with a mask), in the resumable stream order of ``anygpt.data.resumable``;
validation clips start at 0.
"""

from __future__ import annotations

import hashlib
import logging
import random
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.data.resumable import ResumableData, StreamLoader, StreamState

log = logging.getLogger(__name__)


def audio_seconds(path: str) -> float:
    """Duration of an audio file from its header.

    Raises:
        AnyGPTError: The file cannot be read as audio.
    """
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception as err:  # noqa: BLE001 - soundfile raises several kinds for a bad file
        raise AnyGPTError(f"{path}: not readable as audio ({str(err).strip().splitlines()[0][:120]})") from None
    if info.frames == 0:
        raise AnyGPTError(f"{path}: holds no samples")
    return info.frames / info.samplerate


def read_clip(item: dict, sample_rate: int, clip: int, offset: float) -> tuple[torch.Tensor, int]:
    """``clip`` samples of channel 0 at ``sample_rate`` from ``offset`` seconds on (zero-padded), and how many are real."""
    from anygpt.tokenizers.audio import as_waveform, resample

    wave, rate = as_waveform(item["path"], offset, clip / sample_rate + 0.05)
    wave = resample(wave[0], rate, sample_rate)[:clip]
    return torch.nn.functional.pad(wave, (0, clip - len(wave))), len(wave)


def collate_clips(items: list[tuple[dict, float]], sample_rate: int, clip: int) -> dict:
    """A batch ``{"audio": [B, L], "mask": [B, L], "offset": [B], "items": [records]}`` of clips."""
    waves, masks, offsets, records = [], [], [], []
    for item, offset in items:
        try:
            wave, real = read_clip(item, sample_rate, clip, offset)
        except AnyGPTError as err:
            log.warning("skipped %s", err)
            continue
        waves.append(wave)
        masks.append(torch.arange(clip) < real)
        offsets.append(offset)
        records.append(item)
    if not waves:
        raise AnyGPTError(f"no readable clip in a batch of {len(items)} ({items[0][0]['path']}, ...)")
    return {"audio": torch.stack(waves), "mask": torch.stack(masks), "offset": torch.tensor(offsets),
            "items": records}


class AudioClipsDataModule(ResumableData, LightningDataModule):
    """Fixed-length audio clips for codec and decoder training.

    Args:
        train: Training media: a manifest (JSONL of ``{"path", ...}``, paths relative to it) or a folder of audio.
        val: Validation media, same forms; each file gives one clip from its start. None: no validation.
        sample_rate: Clips are resampled to it (channel 0, as the codecs encode).
        clip_seconds: Clip length; shorter files are zero-padded and masked.
        batch_size: Clips per batch and process.
        seed: Seed of the training order and the clip offsets.
        num_workers: Processes that read and resample clips.
    """

    def __init__(self, train: str | None = None, val: str | None = None, sample_rate: int = 16000,
                 clip_seconds: float = 3.0, batch_size: int = 8, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if clip_seconds <= 0 or batch_size < 1 or sample_rate < 1:
            raise AnyGPTError(f"need clip_seconds > 0, batch_size >= 1 and sample_rate >= 1, got {clip_seconds}, "
                              f"{batch_size}, {sample_rate}")
        self.train_source, self.val_source = train, val
        self.sample_rate, self.clip = sample_rate, int(round(clip_seconds * sample_rate))
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.train_items: list[dict] = []
        self.val_items: list[dict] = []
        self.skipped: list[str] = []

    def _read(self, source: str) -> list[dict]:
        from anygpt.data.corpus import read_manifest

        items, problems = read_manifest(source, require_text=False)
        usable = []
        for item in items:
            try:
                item["seconds"] = audio_seconds(item["path"])
                usable.append(item)
            except AnyGPTError as err:
                problems.append(str(err))
        for problem in problems:
            log.warning("skipped %s", problem)
        self.skipped += problems
        return usable

    def setup(self, stage: str) -> None:
        if stage == "fit":
            if not self.train_source:
                raise AnyGPTError("data.train is empty: fit needs a manifest or folder of audio")
            self.train_items = self._read(self.train_source)
            if not self.train_items:
                raise AnyGPTError(f"no readable audio in {self.train_source} ({len(self.skipped)} skipped)")
            listing = hashlib.sha1("\n".join(f"{item['path']}:{item['seconds']:.4f}" for item in self.train_items)
                                   .encode()).hexdigest()[:16]  # the media's names and lengths, not their bytes
            self.stream = StreamState([], {"seed": self.seed, "clip": self.clip, "sample_rate": self.sample_rate,
                                           "media": listing})
        if stage in ("fit", "validate") and self.val_source:
            self.val_items = self._read(self.val_source)
        if self.skipped:
            log.warning("%d media files skipped (data module's `skipped` lists them)", len(self.skipped))

    def _epoch(self, k: int) -> list[tuple[dict, float]]:
        rng = random.Random(f"{self.seed}:{k}")
        order = rng.sample(range(len(self.train_items)), len(self.train_items))
        clip_seconds = self.clip / self.sample_rate
        return [(self.train_items[i], rng.uniform(0, max(0.0, self.train_items[i]["seconds"] - clip_seconds)))
                for i in order]

    def train_dataloader(self) -> StreamLoader:
        collate = partial(collate_clips, sample_rate=self.sample_rate, clip=self.clip)
        return StreamLoader(self._epoch, collate, self.batch_size, self.trainer, self.stream, self.num_workers)

    def val_dataloader(self) -> Any:
        if not self.val_items:
            return []
        collate = partial(collate_clips, sample_rate=self.sample_rate, clip=self.clip)
        return DataLoader([(item, 0.0) for item in self.val_items], batch_size=self.batch_size,
                          num_workers=self.num_workers, collate_fn=collate)
