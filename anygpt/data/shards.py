"""Token shards: AnyGPT JSONL or a compact memory-mapped binary format, written atomically, and a converter.

JSONL shard ``NAME.jsonl``: one AnyGPT record per line (pipeline §5.1), ``{"text": ..., "<modality>":
"<start><prefix12>...<end>"}`` with codec-local code numbers; ``fit`` reads it directly.

Binary shard, four files:

- ``NAME.bin``: the codes of all records concatenated, little-endian ``uint16`` when every code is below 65536,
  else ``int32`` (the meta says which);
- ``NAME.idx.npy``: int64 offsets ``[records + 1]`` into ``NAME.bin`` (``np.load(..., mmap_mode="r")``);
- ``NAME.texts.jsonl``: one JSON string per record, its text;
- ``NAME.meta.json``: ``{"format": "anygpt-shard-v1", "modality", "token_prefix", "start_tag", "end_tag",
  "dtype", "records", "texts_file"}``.

A shard is finished once its marker exists: ``NAME.meta.json`` (binary) or ``NAME.jsonl`` (JSONL). Every file is
written under a ``.partial`` name first and renamed with ``os.replace``, the marker last, so a crash never leaves a
shard that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from anygpt import AnyGPTError

log = logging.getLogger(__name__)

FORMAT = "anygpt-shard-v1"
PARTIAL = ".partial"
_BIN_SUFFIXES = (".meta.json", ".idx.npy", ".texts.jsonl", ".bin")
_TOKEN = re.compile(r"<([^<>]*?)>")


def shard_stem(path: str | os.PathLike) -> Path:
    """``NAME`` of any of a shard's files (``NAME.bin``, ``NAME.meta.json``, ``NAME.jsonl`` ...) or of ``NAME``."""
    path = Path(path)
    for suffix in (*_BIN_SUFFIXES, ".jsonl"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def shard_finished(stem: str | os.PathLike) -> bool:
    """Whether a finished shard (either format) exists at ``stem``."""
    stem = shard_stem(stem)
    return stem.with_name(stem.name + ".meta.json").is_file() or stem.with_name(stem.name + ".jsonl").is_file()


def expand_folders(files: list[str]) -> list[str]:
    """``files`` with every folder replaced by the shards and JSONL files in it, sorted (a tokenize output folder
    names all its shards); other entries stay as given."""
    out = []
    for file in files:
        folder = Path(file)
        if not folder.is_dir():
            out.append(str(file))
            continue
        stems = sorted(p.name[: -len(".meta.json")] for p in folder.glob("*.meta.json"))
        texts = {f"{stem}.texts.jsonl" for stem in stems}
        found = [str(folder / stem) for stem in stems]
        found += [str(p) for p in sorted(folder.glob("*.jsonl")) if p.name not in texts]
        if not found:
            raise AnyGPTError(f"data folder {folder} holds no token shards or JSONL files")
        out += sorted(found)
    return out


def token_string(codes, token_prefix: str, start_tag: str, end_tag: str) -> str:
    """``<start><prefix c0><prefix c1>...<end>`` for codec-local codes."""
    return start_tag + "".join(f"<{token_prefix}{int(c)}>" for c in codes) + end_tag


def parse_token_string(value: str) -> tuple[np.ndarray, str, str, str]:
    """Codes, token prefix, start and end tag of an AnyGPT modality string; ``ValueError`` if malformed."""
    if not isinstance(value, str):
        raise ValueError(f"the modality value must be a token string, got {type(value).__name__}")
    tokens = _TOKEN.findall(value)
    if len(tokens) < 2 or "".join(f"<{t}>" for t in tokens) != value:
        raise ValueError("the modality value is not a <start><code>...<end> token string")
    start, end, middle = f"<{tokens[0]}>", f"<{tokens[-1]}>", tokens[1:-1]
    prefix, codes = "", []
    for token in middle:
        match = re.fullmatch(r"(.*?)(\d+)", token)
        if match is None or (codes and match.group(1) != prefix):
            raise ValueError(f"unexpected token <{token}> inside the span")
        prefix = match.group(1)
        codes.append(int(match.group(2)))
    return np.asarray(codes, dtype=np.int64), prefix, start, end


class ShardWriter:
    """Writes one shard; nothing is visible under the final names until ``close()`` succeeds.

    Use as a context manager: an exception inside the ``with`` block aborts the shard (removes its partial
    files). Binary shards keep their codes in memory (as int32) until ``close()``, where the dtype is chosen.

    Args:
        path_stem: ``NAME``: the shard's files are ``NAME.bin``, ``NAME.idx.npy`` ... or ``NAME.jsonl``.
        modality: Modality key of the records (``music``).
        token_prefix: Prefix of the code tokens (``🎶``).
        start_tag: Span start tag (``<somu>``).
        end_tag: Span end tag (``<eomu>``).
        format: ``bin`` (binary, memory-mappable) or ``jsonl`` (AnyGPT records).
    """

    def __init__(self, path_stem: str | os.PathLike, modality: str, token_prefix: str, start_tag: str,
                 end_tag: str, format: Literal["bin", "jsonl"] = "bin"):
        if format not in ("bin", "jsonl"):
            raise AnyGPTError(f"shard format must be 'bin' or 'jsonl', got {format!r}")
        self.stem = shard_stem(path_stem)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.modality, self.token_prefix = modality, token_prefix
        self.start_tag, self.end_tag, self.format = start_tag, end_tag, format
        self.records = 0
        self.closed = False
        self._codes: list[np.ndarray] = []
        self._texts_handle = self._open(".texts.jsonl" if format == "bin" else ".jsonl")

    def _final(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)

    def _partial(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix + PARTIAL)

    def _open(self, suffix: str):
        return self._partial(suffix).open("w", encoding="utf-8")

    def add(self, codes, text: str) -> None:
        """Append one record: its codec-local codes (tensor, array or list of ints) and its text."""
        if self.closed:
            raise AnyGPTError(f"shard {self.stem} is already closed")
        array = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes).reshape(-1)
        if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= 2**31):
            raise ValueError(f"codes must be integers in [0, 2**31), got {array.dtype} {array.min()}..{array.max()}")
        array = array.astype(np.int32)
        if self.format == "bin":
            self._codes.append(array)
            self._texts_handle.write(json.dumps(str(text), ensure_ascii=False) + "\n")
        else:
            record = {"text": str(text),
                      self.modality: token_string(array, self.token_prefix, self.start_tag, self.end_tag)}
            self._texts_handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records += 1

    def close(self) -> Path:
        """Finish the shard: write the remaining files, then rename all of them, the marker last."""
        if self.closed:
            raise AnyGPTError(f"shard {self.stem} is already closed")
        _sync_close(self._texts_handle)
        if self.format == "jsonl":
            os.replace(self._partial(".jsonl"), self._final(".jsonl"))
            self.closed = True
            return self._final(".jsonl")
        lengths = np.asarray([len(c) for c in self._codes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        codes = np.concatenate(self._codes) if self._codes else np.zeros(0, dtype=np.int32)
        dtype = "uint16" if codes.size == 0 or codes.max() < 65536 else "int32"
        with self._partial(".bin").open("wb") as handle:
            handle.write(codes.astype("<u2" if dtype == "uint16" else "<i4").tobytes())
            _sync_close(handle)
        with self._partial(".idx.npy").open("wb") as handle:
            np.save(handle, offsets.astype("<i8"))
            _sync_close(handle)
        meta = {"format": FORMAT, "modality": self.modality, "token_prefix": self.token_prefix,
                "start_tag": self.start_tag, "end_tag": self.end_tag, "dtype": dtype, "records": self.records,
                "texts_file": self._final(".texts.jsonl").name}
        with self._open(".meta.json") as handle:
            json.dump(meta, handle, ensure_ascii=False, indent=1)
            _sync_close(handle)
        for suffix in (".bin", ".idx.npy", ".texts.jsonl", ".meta.json"):  # the marker last
            os.replace(self._partial(suffix), self._final(suffix))
        self.closed, self._codes = True, []
        return self._final(".meta.json")

    def abort(self) -> None:
        """Drop the shard in progress: close and remove its partial files (finished files are never touched)."""
        if not self._texts_handle.closed:
            self._texts_handle.close()
        for suffix in (*_BIN_SUFFIXES, ".jsonl"):
            self._partial(suffix).unlink(missing_ok=True)
        self.closed, self._codes = True, []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()
        elif not self.closed:
            self.close()


def _sync_close(handle) -> None:
    if not handle.closed:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()


class BinaryShard:
    """Random access to a finished binary shard; the codes are memory-mapped, never read whole.

    Args:
        stem: ``NAME`` (or any of its files' paths).

    Attributes:
        meta: The shard's ``NAME.meta.json``.
    """

    def __init__(self, stem: str | os.PathLike):
        self.stem = shard_stem(stem)
        meta_path = self.stem.with_name(self.stem.name + ".meta.json")
        if not meta_path.is_file():
            raise AnyGPTError(f"no finished binary shard at {self.stem} ({meta_path.name} is missing)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise AnyGPTError(f"{meta_path}: unknown shard format {self.meta.get('format')!r}")
        dtype = np.dtype("<u2" if self.meta["dtype"] == "uint16" else "<i4")
        bin_path = self.stem.with_name(self.stem.name + ".bin")
        size = bin_path.stat().st_size
        self.codes = np.memmap(bin_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        self.offsets = np.load(self.stem.with_name(self.stem.name + ".idx.npy"), mmap_mode="r")
        with (self.stem.parent / self.meta["texts_file"]).open(encoding="utf-8") as handle:
            self.texts = [json.loads(line) for line in handle]
        if not len(self.offsets) == len(self.texts) + 1 == self.meta["records"] + 1:
            raise AnyGPTError(f"shard {self.stem} is inconsistent: {len(self.offsets) - 1} offsets, "
                              f"{len(self.texts)} texts, {self.meta['records']} records in its meta")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of a {len(self)}-record shard")
        index %= len(self)
        return self.codes[self.offsets[index]: self.offsets[index + 1]], self.texts[index]

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        return (self[i] for i in range(len(self)))


def is_jsonl_shard(path: str | os.PathLike) -> bool:
    """A ``NAME.jsonl`` that is not the texts file of a binary shard."""
    name = Path(path).name
    return name.endswith(".jsonl") and not name.endswith(".texts.jsonl")


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` per non-blank line; a line that is not JSON gives an ``AnyGPTError``."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as err:
                    yield number, AnyGPTError(f"bad JSON ({err.msg} at column {err.colno})")


def read_jsonl_shard(path: str | os.PathLike, problems: list[str] | None = None) -> Iterator[tuple[np.ndarray, str, dict]]:
    """``(codes int64, text, info)`` per valid record; malformed lines are logged as ``file:line: reason``.

    ``info`` holds the record's ``modality``, ``token_prefix``, ``start_tag`` and ``end_tag``. Malformed lines
    are skipped and appended to ``problems`` when given.
    """
    path = Path(path)
    for number, record in json_lines(path):
        try:
            if isinstance(record, AnyGPTError):
                raise ValueError(str(record))
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError("not a record with a 'text' string")
            keys = [k for k in record if k != "text"]
            if len(keys) != 1:
                raise ValueError(f"expected one modality key besides 'text', got {keys}")
            codes, prefix, start, end = parse_token_string(record[keys[0]])
        except ValueError as err:
            problem = f"{path}:{number}: {err}"
            log.warning("skipped %s", problem)
            if problems is not None:
                problems.append(problem)
            continue
        info = {"modality": keys[0], "token_prefix": prefix, "start_tag": start, "end_tag": end}
        yield codes, record["text"], info


def read_shard(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, str]]:
    """``(codes, text)`` per record of a finished shard of either format: any of its files, or its ``NAME``."""
    stem = shard_stem(path)
    if not is_jsonl_shard(path) and not stem.with_name(stem.name + ".meta.json").is_file():
        if stem.with_name(stem.name + ".jsonl").is_file():
            path = stem.with_name(stem.name + ".jsonl")
    if is_jsonl_shard(path):
        if not Path(path).is_file():
            raise AnyGPTError(f"shard not found: {path}")
        return ((codes, text) for codes, text, _ in read_jsonl_shard(path))
    return iter(BinaryShard(path))


def convert(src: str | os.PathLike, dst_stem: str | os.PathLike, format: Literal["bin", "jsonl"]) -> Path:
    """Copy the shard ``src`` (either format) to ``dst_stem`` in ``format``; returns the new shard's marker file.

    Codes and texts are kept exactly; a JSONL source takes its modality and tags from its first valid record
    (an empty JSONL shard cannot be converted: its modality is unknown).
    """
    if is_jsonl_shard(src):
        records = read_jsonl_shard(src)
        first = next(records, None)
        if first is None:
            raise AnyGPTError(f"cannot convert {src}: it holds no valid record, so its modality is unknown")
        info = first[2]
        rows = ((c, t) for c, t, _ in _chain([first], records))
    else:
        shard = BinaryShard(src)
        info = {key: shard.meta[key] for key in ("modality", "token_prefix", "start_tag", "end_tag")}
        rows = iter(shard)
    with ShardWriter(dst_stem, format=format, **info) as writer:
        for codes, text in rows:
            writer.add(codes, text)
        return writer.close()


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def main(argv: list[str] | None = None) -> None:
    """``python -m anygpt.data.shards SRC DST_STEM --format {bin,jsonl}``: convert one shard."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m anygpt.data.shards", description=main.__doc__)
    parser.add_argument("src", help="a shard: NAME.jsonl, or NAME / NAME.meta.json of a binary shard")
    parser.add_argument("dst_stem", help="NAME of the converted shard")
    parser.add_argument("--format", choices=("bin", "jsonl"), required=True)
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.dst_stem, args.format))
    except AnyGPTError as err:
        parser.exit(1, f"anygpt: error: {err}\n")


if __name__ == "__main__":
    main()
