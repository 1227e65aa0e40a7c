"""Tokenize a corpus into shards with Lightning's predict loop: ``anygpt tokenize --config configs/tokenize/X.yaml``.

``CorpusDataModule`` reads a manifest and serves batches that never cross a shard, ``CorpusTokenizer`` encodes
them with a codec, and ``ShardWriterCallback`` writes each shard atomically once all its items have arrived. A
rerun skips finished shards, so a crash loses at most the shards in progress.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from anygpt import AnyGPTError
from anygpt.messages import one_line
from anygpt.data.shards import ShardWriter, shard_finished

log = logging.getLogger(__name__)

MEDIA_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".jpg", ".jpeg", ".png", ".webp", ".bmp")
REPORT = "tokenize_report.json"


def shard_name(index: int) -> str:
    """File stem of shard ``index``: ``shard-00003``."""
    return f"shard-{index:05d}"


def read_manifest(manifest: str | os.PathLike, require_text: bool = True) -> tuple[list[dict], list[str]]:
    """Valid items ``{"path", "text", "where"}`` in order, and one ``where: reason`` per skipped entry.

    ``manifest`` is a JSONL file of ``{"path", "text"}`` records (relative paths are resolved against the file's
    folder; ``where`` is ``file:line``), or a folder of media files, each captioned by the ``.txt`` file of the
    same name (``where`` is the media path). Entries without text (unless ``require_text`` is False: codec
    training reads media alone, text "") or whose media file is missing are skipped. Other fields of a JSONL record
    are kept.
    """
    root = Path(manifest)
    if root.is_dir():
        return _read_folder(root, require_text)
    if not root.is_file():
        raise AnyGPTError(f"manifest not found: {root}")
    items, problems = [], []
    with root.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{root}:{number}"
            try:
                record = json.loads(line)
            except ValueError as err:
                problems.append(f"{where}: bad JSON ({err.msg} at column {err.colno})")
                continue
            problem = _check_record(record, root.parent, require_text)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                items.append({**record, "path": os.path.normpath(root.parent / record["path"]),
                              "text": record.get("text") or "", "where": where})
    return items, problems


def _check_record(record: Any, folder: Path, require_text: bool = True) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("path"), str) or not record["path"].strip():
        return "no 'path'"
    if require_text and (not isinstance(record.get("text"), str) or not record["text"].strip()):
        return "no 'text' (or it is empty)"
    if not (folder / record["path"]).is_file():
        return f"media file not found: {os.path.normpath(folder / record['path'])}"
    return None


def _read_folder(root: Path, require_text: bool = True) -> tuple[list[dict], list[str]]:
    items, problems = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file()):
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
        if text or not require_text:
            items.append({"path": str(path), "text": text, "where": str(path)})
        else:
            problems.append(f"{path}: no caption ({caption.name} is missing or empty)")
    return items, problems


def parse_part(part: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)``, checked; None stays None."""
    if part is None:
        return None
    try:
        index, count = (int(x) for x in str(part).split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise AnyGPTError(f"data.part must be 'i/n' with 0 <= i < n, got {part!r}")
    return index, count


def _as_is(batch):
    return batch


class CorpusDataModule(LightningDataModule):
    """Serves a manifest's items in batches that never cross a shard; finished shards are skipped (resume).

    The valid items, in manifest order, form shards of ``shard_size`` consecutive items (``shard-00000``, ...).
    A shard whose finished files already exist in ``output_dir`` is not served again. Failed items still count
    toward their shard, so the split into shards depends only on the manifest (keep it unchanged between a run
    and its resumption).

    With several devices, shard ``k`` goes whole to rank ``k % world_size``: the data module splits the work
    itself, so the trainer must run with ``use_distributed_sampler: false`` (the default of ``anygpt tokenize``).
    ``part`` splits it the same way between separate ``anygpt tokenize`` runs on one manifest and output folder
    (say 8 runs sharing a GPU, for codecs that encode one item at a time): part ``i/n`` takes the shards
    ``k % n == i`` and then splits those between its own ranks.

    Args:
        manifest: A JSONL file of ``{"path", "text"}`` records (paths relative to its folder), or a folder of
            media files captioned by sidecar ``.txt`` files (``x.wav`` + ``x.txt``).
        output_dir: Folder of the shards (checked for finished ones).
        shard_size: Items per shard.
        batch_size: Items encoded together (a batch at the end of a shard may be smaller).
        num_workers: DataLoader workers (they only hand out item records; media is read in ``predict_step``).
        part: ``"i/n"``: this run tokenizes only the shards ``k`` with ``k % n == i`` (0 <= i < n); None: all.
    """

    def __init__(self, manifest: str, output_dir: str, shard_size: int = 1000, batch_size: int = 8,
                 num_workers: int = 0, part: str | None = None):
        super().__init__()
        if shard_size < 1 or batch_size < 1 or num_workers < 0:
            raise AnyGPTError(f"need shard_size >= 1, batch_size >= 1 and num_workers >= 0, got {shard_size}, "
                              f"{batch_size}, {num_workers}")
        self.part = parse_part(part)
        self.manifest, self.output_dir = manifest, Path(output_dir)
        self.shard_size, self.batch_size, self.num_workers = shard_size, batch_size, num_workers
        self.problems: list[str] = []
        self.shards: list[list[dict]] = []
        self.own: list[int] = []  # the shards of this part (all without one)
        self.pending: list[int] = []

    def setup(self, stage: str) -> None:
        items, self.problems = read_manifest(self.manifest)
        for problem in self.problems[:20]:
            log.warning("skipped %s", problem)
        if len(self.problems) > 20:
            log.warning("skipped %d more manifest entries (all listed in %s)", len(self.problems) - 20, REPORT)
        size = self.shard_size
        self.shards = [items[i: i + size] for i in range(0, len(items), size)]
        index, count = self.part or (0, 1)
        self.own = [k for k in range(len(self.shards)) if k % count == index]
        self.pending = [k for k in self.own if not shard_finished(self.output_dir / shard_name(k))]

    @property
    def report_name(self) -> str:
        """The report's file name without the rank: ``tokenize_report.json``, or ``tokenize_report-part{i}of{n}``
        with ``part``."""
        return REPORT if self.part is None else f"tokenize_report-part{self.part[0]}of{self.part[1]}.json"

    def batches(self, rank: int = 0, world_size: int = 1) -> list[list[dict]]:
        """The batches of one rank: its pending shards (``k % world_size == rank``; with ``part`` ``i/n``:
        ``k // n % world_size == rank``), cut into ``batch_size``."""
        count = self.part[1] if self.part else 1
        out = []
        for k in self.pending:
            if k // count % world_size != rank:
                continue
            shard = self.shards[k]
            for start in range(0, len(shard), self.batch_size):
                out.append([{**item, "shard": k, "shard_size": len(shard)}
                            for item in shard[start: start + self.batch_size]])
        return out

    def predict_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            if world > 1 and self.trainer._accelerator_connector.use_distributed_sampler:
                raise AnyGPTError("tokenizing on several devices needs trainer.use_distributed_sampler: false")
        # Each dataset element is one whole batch (batch_size=None): no sampler can split it.
        return DataLoader(self.batches(rank, world), batch_size=None, collate_fn=_as_is,
                          num_workers=self.num_workers)


class CorpusTokenizer(LightningModule):
    """Encodes batches of media files to codec-local codes with one codec (frozen, inference only).

    A batch is encoded together; if that fails, its items are encoded one by one so that a bad file fails
    alone, with its manifest line in the error.

    Args:
        codec: The modality codec (``anygpt.tokenizers.music.EncodecMusicCodec`` ...): an instance or a
            ``{class_path, init_args}`` spec.
    """

    def __init__(self, codec: Any):
        super().__init__()
        from anygpt.tokenizers.base import instantiate

        self.codec = instantiate(codec)
        for name in ("modality", "token_prefix", "start_tag", "end_tag", "vocab_size", "encode"):
            if not hasattr(self.codec, name):
                raise AnyGPTError(f"model.codec: {type(self.codec).__name__} is not a codec (it has no {name})")

    def predict_step(self, batch: list[dict], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict]:
        """Per item: ``shard``, ``shard_size``, ``text``, ``where`` and either ``codes`` or ``error``."""
        results = [{k: item[k] for k in ("shard", "shard_size", "text", "where")} for item in batch]
        try:
            encoded = self.codec.encode([item["path"] for item in batch])
        except Exception:
            encoded = None
        for i, item in enumerate(batch):
            try:
                codes = encoded[i] if encoded is not None else self.codec.encode([item["path"]])[0]
                results[i]["codes"] = self._check(codes.reshape(-1).cpu())
            except Exception as err:
                results[i]["error"] = f"{item['where']}: {item['path']}: {one_line(err, with_type=True)}"
        return results

    def _check(self, codes):
        if codes.numel() == 0:
            raise AnyGPTError("the codec made no codes")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codec.vocab_size:
            raise AnyGPTError(f"codes outside [0, {self.codec.vocab_size})")
        return codes


class ShardWriterCallback(BasePredictionWriter):
    """Writes predicted codes into shards, each finalized atomically once all its items have arrived.

    At the end it writes ``tokenize_report.json`` (``tokenize_report-rank{r}.json`` per rank on several
    devices): counts, the skipped manifest entries and the failed items, each as ``file:line: reason``, and
    prints a one-line summary. After an exception only finished shards remain. The progress bar counts
    batches (it/s); this callback adds the items per second to it.

    Args:
        output_dir: Folder of the shards; None takes the data module's ``output_dir``.
        format: ``bin`` (binary shards) or ``jsonl`` (AnyGPT JSONL records).
    """

    def __init__(self, output_dir: str | None = None, format: Literal["bin", "jsonl"] = "bin"):
        super().__init__(write_interval="batch")
        if format not in ("bin", "jsonl"):
            raise AnyGPTError(f"shard format must be 'bin' or 'jsonl', got {format!r}")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.format = format
        self._reset()

    def _reset(self) -> None:
        self.writers: dict[int, ShardWriter] = {}
        self.seen: dict[int, int] = {}
        self.counts = {"items_ok": 0, "items_failed": 0, "shards_written": 0}
        self.failures: list[str] = []
        self.started = time.monotonic()

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._reset()
        if self.output_dir is None:
            self.output_dir = Path(getattr(trainer.datamodule, "output_dir", None) or "outputs/shards")
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction: list[dict], batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for result in prediction:
            shard = result["shard"]
            if shard not in self.writers:
                codec = pl_module.codec
                self.writers[shard] = ShardWriter(self.output_dir / shard_name(shard), codec.modality,
                                                  codec.token_prefix, codec.start_tag, codec.end_tag, self.format)
                self.seen[shard] = 0
            if "error" in result:
                self.counts["items_failed"] += 1
                self.failures.append(result["error"])
                log.warning("failed %s", result["error"])
            else:
                self.writers[shard].add(result["codes"], result["text"])
                self.counts["items_ok"] += 1
            self.seen[shard] += 1
            if self.seen[shard] == result["shard_size"]:
                self.writers.pop(shard).close()
                self.counts["shards_written"] += 1
        self._show_rate(trainer)

    def _show_rate(self, trainer) -> None:
        """Items per second on the progress bar (which itself counts batches): tqdm's postfix, rich's label."""
        done = self.counts["items_ok"] + self.counts["items_failed"]
        rate = f"{done / max(time.monotonic() - self.started, 1e-9):.1f} items/s"
        bar_callback = trainer.progress_bar_callback
        tqdm_bar = getattr(bar_callback, "_predict_progress_bar", None)
        rich_task = getattr(bar_callback, "predict_progress_bar_id", None)
        if tqdm_bar is not None and hasattr(tqdm_bar, "set_postfix"):
            tqdm_bar.set_postfix({"items/s": rate.split()[0]}, refresh=False)
        elif rich_task is not None and getattr(bar_callback, "progress", None) is not None:
            bar_callback.progress.update(rich_task, description=f"Tokenizing, {rate}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._abort_open()

    def _abort_open(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        unfinished = sorted(self.writers)
        self._abort_open()  # a run cut short (limit_predict_batches) leaves its shards to the next run
        datamodule = trainer.datamodule
        skipped = list(getattr(datamodule, "problems", []))
        elapsed = time.monotonic() - self.started
        done = self.counts["items_ok"] + self.counts["items_failed"]
        pending = getattr(datamodule, "pending", [])
        total = len(getattr(datamodule, "own", getattr(datamodule, "shards", [])))
        report = {**self.counts, "lines_skipped": len(skipped), "shards_total": total,
                  "shards_already_done": total - len(pending), "shards_unfinished": unfinished,
                  "seconds": round(elapsed, 3), "items_per_second": round(done / max(elapsed, 1e-9), 2),
                  "format": self.format, "skipped": skipped, "failed": self.failures}
        name = getattr(datamodule, "report_name", REPORT)
        if trainer.world_size > 1:
            name = name.replace(".json", f"-rank{trainer.global_rank}.json")
        path = self.output_dir / name
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, path)
        rank = "" if trainer.world_size == 1 else f" (rank {trainer.global_rank})"
        print(f"anygpt tokenize{rank}: {self.counts['items_ok']} items ok, {self.counts['items_failed']} failed, "
              f"{len(skipped)} manifest entries skipped; {self.counts['shards_written']} shards written, "
              f"{total - len(pending)} already done; {report['items_per_second']} items/s; report: {path}",
              flush=True)
