"""Predict requests: the original's ``source|target|content[|voice_prompt]`` lines, or JSONL with named fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anygpt import AnyGPTError


@dataclass
class Request:
    """One generation request. A request that could not be parsed carries its ``error`` and fails alone.

    Args:
        index: Position in the input (outputs keep this order).
        line: The request as given (a line, or the JSON record).
        source: Input modality (``text``, ``music``, ...).
        target: Output modality.
        content: Text, or the path of the input media.
        voice_prompt: Path of a voice sample (text to speech only).
        seed: Sampling seed; None takes the data module's seed plus ``index``.
        instruction: Instruction text; None draws one from the model's pools with ``seed``.
        error: Why the request is invalid, or None.
    """

    index: int
    line: str
    source: str = ""
    target: str = ""
    content: str = ""
    voice_prompt: str | None = None
    seed: int | None = None
    instruction: str | None = None
    error: str | None = None


def parse_line(line: str, index: int) -> Request:
    """Parse ``source|target|content[|voice_prompt]`` (the content itself may not hold ``|``)."""
    request = Request(index=index, line=line)
    parts = [p.strip() for p in line.split("|")]
    if len(parts) < 3:
        request.error = f"request {index}: expected source|target|content[|voice_prompt], got {line[:80]!r}"
        return request
    if len(parts) > 4:
        request.error = f"request {index}: too many '|' fields ({len(parts)}); use a JSONL request for such content"
        return request
    request.source, request.target, request.content = parts[0].lower(), parts[1].lower(), parts[2]
    request.voice_prompt = parts[3] if len(parts) == 4 and parts[3] else None
    return _check(request)


def parse_record(record: dict | str, index: int) -> Request:
    """Parse a JSON request ``{"source", "target", "content", "voice_prompt"?, "seed"?, "instruction"?}``."""
    line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
    request = Request(index=index, line=line)
    try:
        record = json.loads(record) if isinstance(record, str) else record
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        request.error = f"request {index}: bad JSON ({err})"
        return request
    unknown = set(record) - {"source", "target", "content", "voice_prompt", "seed", "instruction"}
    if unknown:
        request.error = f"request {index}: unknown fields {sorted(unknown)}"
        return request
    request.source = str(record.get("source", "")).lower()
    request.target = str(record.get("target", "")).lower()
    request.content = str(record.get("content", ""))
    request.voice_prompt = record.get("voice_prompt")
    request.instruction = record.get("instruction")
    seed = record.get("seed")
    if seed is not None and not isinstance(seed, int):
        request.error = f"request {index}: seed must be an integer, got {seed!r}"
        return request
    request.seed = seed
    return _check(request)


def _check(request: Request) -> Request:
    i = request.index
    if not request.source or not request.target:
        request.error = f"request {i}: source and target modality are both required"
    elif not request.content.strip():
        request.error = f"request {i}: empty content for {request.source}|{request.target}"
    elif request.source == request.target:
        request.error = f"request {i}: {request.source}|{request.target} is not a task (source equals target)"
    elif "text" not in (request.source, request.target):
        request.error = f"request {i}: {request.source}|{request.target} is not supported (one side must be text)"
    elif request.voice_prompt and request.target != "speech":
        request.error = f"request {i}: a voice prompt is only read for text|speech"
    return request


def read_requests(requests: list[str | dict] = (), requests_file: str | None = None) -> list[Request]:
    """Requests from a file (``.jsonl``: JSON per line; else one line each), or else from a list.

    A file replaces the list, so ``--data.requests_file`` overrides a config's example requests. Blank lines and
    lines starting with ``#`` are skipped in text files.
    """
    items = [] if requests_file else [(item, isinstance(item, dict)) for item in requests]
    if requests_file:
        path = Path(requests_file)
        if not path.is_file():
            raise AnyGPTError(f"requests file not found: {path}")
        is_jsonl = path.suffix == ".jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and (is_jsonl or not line.lstrip().startswith("#")):
                items.append((line, is_jsonl))
    return [parse_record(item, i) if is_json else parse_line(item, i) for i, (item, is_json) in enumerate(items)]


class OrderedItems(LightningDataModule):
    """Predict items (requests, conversations) served in input order, ``batch_size`` at a time; an item without a
    seed gets ``seed + index``. Subclasses read their items in ``setup`` and hand them to ``serve``."""

    def __init__(self, batch_size: int = 4, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise AnyGPTError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.items: list = []

    def serve(self, items: list, name: str) -> None:
        """Keep ``items`` (each with ``seed`` and ``index``); none is an error naming ``data.{name}``."""
        if not items:
            raise AnyGPTError(f"no {name}: give data.{name} or data.{name}_file")
        for item in items:
            if item.seed is None:
                item.seed = self.seed + item.index
        self.items = items

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, shuffle=False, collate_fn=list)


class RequestDataModule(OrderedItems):
    """Serves predict requests in input order, a batch at a time.

    Args:
        requests: Request lines (``text|music|a calm piano piece``) or dicts with named fields.
        requests_file: A text file of request lines, or a ``.jsonl`` file of request records; when given, it
            replaces ``requests``.
        batch_size: Requests generated together.
        seed: Base seed: a request without its own seed uses ``seed + index``.
    """

    def __init__(self, requests: list[str | dict] = [], requests_file: str | None = None, batch_size: int = 4,
                 seed: int = 0):
        super().__init__(batch_size, seed)
        self.requests, self.requests_file = list(requests), requests_file

    def setup(self, stage: str) -> None:
        self.serve(read_requests(self.requests, self.requests_file), "requests")
