"""MediaWriter: writes each prediction's media or text and one JSONL manifest line per request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_stem(*parts: str, limit: int = 48) -> str:
    """A file-name stem from free text: letters, digits, ``_`` and ``-`` only (no ``/``, no ``..``)."""
    text = "_".join(_UNSAFE.sub("-", p).strip("-_") for p in parts if p)
    text = re.sub(r"-{2,}", "-", text)[:limit].strip("-_")
    return text or "output"


def create_unique(folder: Path, stem: str, suffix: str):
    """Open a new file ``stem{-n}{suffix}`` in ``folder`` for binary writing; never overwrites."""
    for n in range(10_000):
        path = folder / f"{stem}{'' if n == 0 else f'-{n}'}{suffix}"
        try:
            return path, path.open("xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"too many files named {stem}*{suffix} in {folder}")


class MediaWriter(BasePredictionWriter):
    """Writes ``.wav`` (16-bit PCM, clipped to [-1, 1]), ``.jpg`` and ``.txt`` outputs plus ``predictions.jsonl``.

    The manifest holds one line per request in input order: the request, its ``status`` (``ok`` or
    ``error``), the output file and text, or a one-line ``error``. File names are made only of safe characters,
    are unique, and never replace an existing file (a second run writes ``predictions-1.jsonl``).

    Args:
        output_dir: Folder of the outputs (created if needed).
        write_text_files: Also write each text answer to a ``.txt`` file.
    """

    def __init__(self, output_dir: str = "outputs", write_text_files: bool = True):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.write_text_files = write_text_files
        self.manifest_path: Path | None = None
        self.counts = {"ok": 0, "error": 0}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = "" if trainer.world_size == 1 else f"-rank{trainer.global_rank}"
        path, handle = create_unique(self.output_dir, f"predictions{rank}", ".jsonl")
        handle.close()
        self.manifest_path = path

    def write_on_batch_end(self, trainer, pl_module, prediction: list[dict], batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        with self.manifest_path.open("a", encoding="utf-8") as manifest:
            for response in prediction:
                line = self.write_response(response)
                manifest.write(json.dumps(line, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"anygpt: {self.counts.get('ok', 0)} ok, {self.counts.get('error', 0)} failed; "
                       f"manifest: {self.manifest_path}")

    def write_response(self, response: dict[str, Any]) -> dict[str, Any]:
        """Write one response's files; returns its manifest record."""
        if "replies" in response:
            return self.write_conversation(response)
        record = {k: v for k, v in response.items() if k not in ("media",)}
        if response.get("status") == "ok":
            try:
                stem = safe_stem(f"{response['index']:04d}", f"{response['source']}2{response['target']}",
                                 _content_hint(response))
                if "media" in response:
                    record["file"] = str(self.write_media(stem, response["media"], response.get("sample_rate")))
                elif "text" in response and self.write_text_files:
                    path, handle = create_unique(self.output_dir, stem, ".txt")
                    with handle:
                        handle.write((response["text"] + "\n").encode("utf-8"))
                    record["file"] = str(path)
            except Exception as err:  # noqa: BLE001 - a failed write fails this request only
                record.update(status="error", error=f"request {response.get('index')}: cannot write output: {err}")
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        return record

    def write_conversation(self, response: dict[str, Any]) -> dict[str, Any]:
        """Write every reply of a chat conversation (text, then each media span); returns its manifest record.

        A conversation that failed after some replies keeps them: they are written and listed with its error.
        """
        record = {k: v for k, v in response.items() if k != "replies"}
        record["replies"] = []
        for reply in response["replies"]:
            line = {k: v for k, v in reply.items() if k != "media"}
            stem = safe_stem(f"{response['index']:04d}", "chat", str(response.get("id", "")), f"turn{reply['turn']}")
            try:
                if self.write_text_files:
                    path, handle = create_unique(self.output_dir, stem, ".txt")
                    with handle:
                        handle.write((reply["text"] + "\n").encode("utf-8"))
                    line["file"] = str(path)
                line["media"] = [{"modality": item["modality"], "codes": item["codes"],
                                  "file": str(self.write_media(f"{stem}_{item['modality']}", item["media"],
                                                                item.get("sample_rate")))}
                                 for item in reply["media"]]
            except Exception as err:  # noqa: BLE001 - a failed write fails this conversation only
                record.update(status="error", error=f"conversation {response.get('id')}: cannot write output: {err}")
            record["replies"].append(line)
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        return record

    def write_media(self, stem: str, media, sample_rate: int | None) -> Path:
        """Write a PIL image as ``.jpg`` or a waveform as 16-bit ``.wav``; returns the new file's path."""
        if hasattr(media, "save") and hasattr(media, "size"):  # a PIL image
            path, handle = create_unique(self.output_dir, stem, ".jpg")
            with handle:
                media.convert("RGB").save(handle, format="JPEG", quality=95)
            return path
        if not sample_rate:
            raise ValueError("audio output without a sample rate")
        path, handle = create_unique(self.output_dir, stem, ".wav")
        with handle:
            write_wav(handle, media, sample_rate)
        return path


def write_wav(target, waveform, sample_rate: int) -> None:
    """A waveform tensor (``[L]`` or ``[C, L]``, clipped to [-1, 1]) as 16-bit WAV into a path or binary file."""
    import numpy as np
    import soundfile

    audio = waveform.detach().float().cpu().numpy()
    audio = audio.reshape(-1, audio.shape[-1]).T if audio.ndim > 1 else audio
    soundfile.write(target, np.clip(audio, -1.0, 1.0), int(sample_rate), format="WAV", subtype="PCM_16")


def _content_hint(response: dict) -> str:
    content = response.get("content", "")
    if response.get("source") != "text":
        content = Path(content).stem
    return " ".join(content.split()[:6])
