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
import math
import os
import random
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.data.resumable import ResumableData, StreamLoader, StreamState
from anygpt.messages import one_line

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
        raise AnyGPTError(f"{path}: not readable as audio ({one_line(err)})") from None
    if info.frames == 0:
        raise AnyGPTError(f"{path}: holds no samples")
    return info.frames / info.samplerate


def read_clip(item: dict, sample_rate: int, clip: int, offset: float, speed: float = 1.0) -> tuple[torch.Tensor, int]:
    """``clip`` samples of channel 0 at ``sample_rate`` from ``offset`` seconds on (zero-padded), and how many are real.

    ``speed`` plays the file that much faster, as a tape would: ``clip * speed / sample_rate`` seconds of it, pitch and
    formants raised by the same factor (resampled to ``sample_rate / speed``, rounded by ``speed_rate``).
    """
    from anygpt.tokenizers.audio import as_waveform, resample

    wave, rate = as_waveform(item["path"], offset, clip * speed / sample_rate + 0.05)
    wave = resample(wave[0], rate, speed_rate(sample_rate, speed))[:clip]
    return torch.nn.functional.pad(wave, (0, clip - len(wave))), len(wave)


def speed_rate(sample_rate: int, speed: float) -> int:
    """The rate a file is resampled to for ``speed``: ``sample_rate / speed`` in steps of 1/40 of ``sample_rate``
    (a short resampling kernel); the speed a clip really gets is ``sample_rate / speed_rate(...)``."""
    if speed == 1.0:
        return sample_rate
    step = max(1, sample_rate // 40)
    return max(step, int(round(sample_rate / speed / step)) * step)


def collate_clips(items: list[tuple[dict, float, float]], sample_rate: int, clip: int) -> dict:
    """A batch ``{"audio": [B, L], "mask": [B, L], "offset": [B], "speed": [B], "items": [records]}`` of clips from
    ``(record, offset seconds, speed)`` triples."""
    waves, masks, offsets, speeds, records = [], [], [], [], []
    for item, offset, speed in items:
        try:
            wave, real = read_clip(item, sample_rate, clip, offset, speed)
        except AnyGPTError as err:
            log.warning("skipped %s", err)
            continue
        waves.append(wave)
        masks.append(torch.arange(clip) < real)
        offsets.append(offset)
        speeds.append(sample_rate / speed_rate(sample_rate, speed))
        records.append(item)
    if not waves:
        raise AnyGPTError(f"no readable clip in a batch of {len(items)} ({items[0][0]['path']}, ...)")
    return {"audio": torch.stack(waves), "mask": torch.stack(masks), "offset": torch.tensor(offsets),
            "speed": torch.tensor(speeds, dtype=torch.float64), "items": records}


class MediaDataModule(ResumableData, LightningDataModule):
    """What the media data modules share: manifests read at setup (unreadable files skipped, named, counted), the
    resumable stream of training items, and one validation pass over ``val`` in order.

    Subclasses give ``probe(item)`` (raises ``AnyGPTError`` for an unreadable file; may add fields to the item),
    ``draw(item, rng)`` (the random part of a training item: a clip offset, a crop), ``collate`` and ``settings``.
    """

    def __init__(self, train: str | None, val: str | None, batch_size: int, seed: int, num_workers: int):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise AnyGPTError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.train_source, self.val_source = train, val
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.train_items: list[dict] = []
        self.val_items: list[dict] = []
        self.skipped: list[str] = []

    def probe(self, item: dict) -> None:
        raise NotImplementedError

    def draw(self, item: dict, rng: random.Random) -> Any:
        raise NotImplementedError

    def collate(self, items: list[tuple[dict, Any]]) -> dict:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"seed": self.seed}

    def _read(self, source: str) -> list[dict]:
        from anygpt.data.corpus import read_manifest

        items, problems = read_manifest(source, require_text=False)
        usable = []
        for item in items:
            try:
                self.probe(item)
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
                raise AnyGPTError("data.train is empty: fit needs a manifest or folder of media")
            self.train_items = self._read(self.train_source)
            if not self.train_items:
                raise AnyGPTError(f"no readable media in {self.train_source} ({len(self.skipped)} skipped)")
            listing = hashlib.sha1("\n".join(f"{item['path']}:{os.path.getsize(item['path'])}"
                                             for item in self.train_items).encode()).hexdigest()[:16]
            # the stream is named by the media's names and sizes, not their bytes (corpora are large)
            self.stream = StreamState([], {**self.settings(), "media": listing})
        if stage in ("fit", "validate") and self.val_source:
            self.val_items = self._read(self.val_source)
        if self.skipped:
            log.warning("%d media files skipped (data module's `skipped` lists them)", len(self.skipped))

    def _epoch(self, k: int) -> list[tuple[dict, Any]]:
        rng = random.Random(f"{self.seed}:{k}")
        order = rng.sample(range(len(self.train_items)), len(self.train_items))
        return [(self.train_items[i], self.draw(self.train_items[i], rng)) for i in order]

    def train_dataloader(self) -> StreamLoader:
        return StreamLoader(self._epoch, self.collate, self.batch_size, self.trainer, self.stream, self.num_workers)

    def val_dataloader(self) -> Any:
        if not self.val_items:
            return []
        return DataLoader([(item, None) for item in self.val_items], batch_size=self.batch_size,
                          num_workers=self.num_workers, collate_fn=self.collate)


class AudioClipsDataModule(MediaDataModule):
    """Fixed-length audio clips for codec and decoder training.

    Args:
        train: Training media: a manifest (JSONL of ``{"path", ...}``, paths relative to it) or a folder of audio.
        val: Validation media, same forms; each file gives one clip from its start. None: no validation.
        sample_rate: Clips are resampled to it (channel 0, as the codecs encode).
        clip_seconds: Clip length; shorter files are zero-padded and masked.
        batch_size: Clips per batch and process.
        seed: Seed of the training order and the clip offsets.
        num_workers: Processes that read and resample clips.
        speed: ``[slowest, fastest]``: each training clip is played at a speed drawn log-uniformly from this range,
            as a tape would (pitch and formants move with it: new voices from the corpus's own); None: as recorded.
            Validation clips are never changed.
    """

    def __init__(self, train: str | None = None, val: str | None = None, sample_rate: int = 16000,
                 clip_seconds: float = 3.0, batch_size: int = 8, seed: int = 0, num_workers: int = 0,
                 speed: tuple[float, float] | None = None):
        super().__init__(train, val, batch_size, seed, num_workers)
        if clip_seconds <= 0 or sample_rate < 1:
            raise AnyGPTError(f"need clip_seconds > 0 and sample_rate >= 1, got {clip_seconds} and {sample_rate}")
        if speed is not None and (len(speed) != 2 or not 0.25 <= speed[0] <= speed[1] <= 4.0):
            raise AnyGPTError(f"data.speed must be [slowest, fastest] within [0.25, 4], got {speed}")
        self.sample_rate, self.clip = sample_rate, int(round(clip_seconds * sample_rate))
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))

    def probe(self, item: dict) -> None:
        item["seconds"] = audio_seconds(item["path"])

    def draw(self, item: dict, rng: random.Random) -> tuple[float, float]:
        speed = 1.0 if self.speed is None else math.exp(rng.uniform(*map(math.log, self.speed)))
        return rng.uniform(0, max(0.0, item["seconds"] - self.clip * speed / self.sample_rate)), speed

    def collate(self, items: list[tuple[dict, tuple[float, float] | None]]) -> dict:
        return collate_clips([(item, *(drawn or (0.0, 1.0))) for item, drawn in items], self.sample_rate, self.clip)

    def settings(self) -> dict:
        extra = {} if self.speed is None else {"speed": list(self.speed)}  # resumed streams from before it still match
        return {"seed": self.seed, "clip": self.clip, "sample_rate": self.sample_rate, **extra}


def image_size(path: str) -> tuple[int, int]:
    """Width and height of an image file, checked readable.

    Raises:
        AnyGPTError: The file cannot be read as an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
            return image.size
    except Exception as err:  # noqa: BLE001 - PIL raises several kinds for a bad file
        raise AnyGPTError(f"{path}: not readable as an image ({one_line(err)})") from None


def read_crop(path: str, size: int, corner: tuple[float, float] = (0.5, 0.5), flip: bool = False) -> torch.Tensor:
    """An RGB image scaled so its shorter side is ``size`` (bicubic), cut to ``size x size`` with the crop's
    top-left at fractions ``corner`` of the free room; ``[3, size, size]`` in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = round(corner[0] * (width - size)), round(corner[1] * (height - size))
        image = image.crop((left, top, left + size, top + size))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


class ImageFilesDataModule(MediaDataModule):
    """Square images for image codec and decoder training: shorter side scaled to ``image_size``, then a random crop
    (and horizontal flip) in training, the centre in validation. Batches: ``{"image": [B, 3, S, S] in [0, 1],
    "items": [records]}``.

    Args:
        train: Training images: a manifest (JSONL of ``{"path", ...}``) or a folder of images.
        val: Validation images, same forms. None: no validation.
        image_size: Side of the square crops.
        flip: Flip training crops left-right with probability 1/2.
        batch_size: Images per batch and process.
        seed: Seed of the training order, crops and flips.
        num_workers: Processes that read and resize images.
    """

    def __init__(self, train: str | None = None, val: str | None = None, image_size: int = 224, flip: bool = True,
                 batch_size: int = 8, seed: int = 0, num_workers: int = 0):
        super().__init__(train, val, batch_size, seed, num_workers)
        if image_size < 1:
            raise AnyGPTError(f"image_size must be >= 1, got {image_size}")
        self.image_size, self.flip = image_size, flip

    def probe(self, item: dict) -> None:
        item["width"], item["height"] = image_size(item["path"])

    def draw(self, item: dict, rng: random.Random) -> tuple[float, float, bool]:
        return rng.random(), rng.random(), self.flip and rng.random() < 0.5

    def collate(self, items: list[tuple[dict, tuple | None]]) -> dict:
        images, records = [], []
        for item, drawn in items:
            corner, flip = ((drawn[0], drawn[1]), drawn[2]) if drawn else ((0.5, 0.5), False)
            try:
                images.append(read_crop(item["path"], self.image_size, corner, flip))
                records.append(item)
            except Exception as err:  # noqa: BLE001 - a file that broke after setup: skip it, say so
                log.warning("skipped %s (%s)", item["path"], one_line(err))
        if not images:
            raise AnyGPTError(f"no readable image in a batch of {len(items)} ({items[0][0]['path']}, ...)")
        return {"image": torch.stack(images), "items": records}

    def settings(self) -> dict:
        return {"seed": self.seed, "image_size": self.image_size, "flip": self.flip}
