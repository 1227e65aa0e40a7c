"""Token shards: both formats round-trip, the converter keeps codes and texts exactly, writes are atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anygpt import AnyGPTError
from anygpt.data.shards import (BinaryShard, ShardWriter, convert, parse_token_string, read_shard, shard_finished,
                                token_string)

MUSIC = dict(modality="music", token_prefix="🎶", start_tag="<somu>", end_tag="<eomu>")
RECORDS = [([1, 2048, 4096, 8191], "A calm piano piece"), ([7, 2055, 4100, 6200, 0, 2048, 4096, 6144], "Ünïcode \"q\""),
           ([5], "short\nwith a newline")]


def write(stem, records=RECORDS, format="bin", **info):
    with ShardWriter(stem, format=format, **{**MUSIC, **info}) as writer:
        for codes, text in records:
            writer.add(torch.tensor(codes) if len(codes) > 1 else codes, text)
    return stem


def as_lists(rows):
    return [(np.asarray(codes).tolist(), text) for codes, text in rows]


def test_binary_shard_layout_and_random_access(tmp_path):
    stem = write(tmp_path / "shard-00000")
    meta = json.loads((tmp_path / "shard-00000.meta.json").read_text())
    assert meta == {"format": "anygpt-shard-v1", **MUSIC, "dtype": "uint16", "records": 3,
                    "texts_file": "shard-00000.texts.jsonl"}
    assert np.fromfile(tmp_path / "shard-00000.bin", dtype="<u2").tolist() == sum((c for c, _ in RECORDS), [])
    offsets = np.load(tmp_path / "shard-00000.idx.npy", mmap_mode="r")
    assert isinstance(offsets, np.memmap) and offsets.dtype == np.int64 and offsets.tolist() == [0, 4, 12, 13]
    shard = BinaryShard(stem)
    assert len(shard) == 3 and isinstance(shard.codes, np.memmap)
    assert as_lists([shard[1], shard[-1]]) == [RECORDS[1], RECORDS[2]]
    assert as_lists(read_shard(tmp_path / "shard-00000.meta.json")) == RECORDS
    with pytest.raises(IndexError):
        shard[3]
    assert not list(tmp_path.glob("*.partial"))


def test_large_codes_use_int32(tmp_path):
    write(tmp_path / "big", [([70000, 3], "x")])
    assert json.loads((tmp_path / "big.meta.json").read_text())["dtype"] == "int32"
    assert as_lists(read_shard(tmp_path / "big")) == [([70000, 3], "x")]


def test_jsonl_shard_is_anygpt_format(tmp_path):
    write(tmp_path / "s", format="jsonl")
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"text": "A calm piano piece", "music": "<somu><🎶1><🎶2048><🎶4096><🎶8191><eomu>"}
    assert as_lists(read_shard(tmp_path / "s.jsonl")) == RECORDS
    assert shard_finished(tmp_path / "s") and not (tmp_path / "s.meta.json").exists()


def test_token_string_round_trip_and_errors():
    text = token_string([3, 0, 12], "🗣️", "<sosp>", "<eosp>")
    codes, prefix, start, end = parse_token_string(text)
    assert (codes.tolist(), prefix, start, end) == ([3, 0, 12], "🗣️", "<sosp>", "<eosp>")
    for bad in ("<somu>", "<somu><🎶1><👀2><eomu>", "<somu><🎶x><eomu>", "<somu> <🎶1><eomu>", 5):
        with pytest.raises(ValueError):
            parse_token_string(bad)


def test_convert_bin_jsonl_bin_is_exact(tmp_path):
    write(tmp_path / "a")
    convert(tmp_path / "a", tmp_path / "b", "jsonl")
    convert(tmp_path / "b.jsonl", tmp_path / "c", "bin")
    for suffix in (".bin", ".idx.npy", ".texts.jsonl"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"c{suffix}").read_bytes()
    meta_a, meta_c = (json.loads((tmp_path / f"{n}.meta.json").read_text()) for n in "ac")
    assert meta_c == {**meta_a, "texts_file": "c.texts.jsonl"}
    assert as_lists(read_shard(tmp_path / "c")) == RECORDS


def test_convert_skips_malformed_jsonl_lines_with_file_and_line(tmp_path, caplog):
    good = json.dumps({"text": "ok", "music": "<somu><🎶4><eomu>"}, ensure_ascii=False)
    (tmp_path / "x.jsonl").write_text("\n".join([good, "{bad", json.dumps({"text": "t"}), good]) + "\n")
    convert(tmp_path / "x.jsonl", tmp_path / "y", "bin")
    assert as_lists(read_shard(tmp_path / "y")) == [([4], "ok"), ([4], "ok")]
    assert "x.jsonl:2:" in caplog.text and "x.jsonl:3:" in caplog.text
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(AnyGPTError, match="modality is unknown"):
        convert(tmp_path / "empty.jsonl", tmp_path / "z", "bin")


@pytest.mark.parametrize("format", ["bin", "jsonl"])
def test_a_crash_before_close_leaves_nothing_visible(tmp_path, format):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", format=format, **MUSIC) as writer:
            writer.add([1, 2], "one")
            raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == [] and not shard_finished(tmp_path / "s")
    writer = ShardWriter(tmp_path / "t", format=format, **MUSIC)  # killed before close: only .partial files
    writer.add([1, 2], "one")
    assert not shard_finished(tmp_path / "t")
    assert all(p.name.endswith(".partial") for p in tmp_path.iterdir())
    with pytest.raises(AnyGPTError, match="no finished binary shard"):
        BinaryShard(tmp_path / "t")


def test_empty_shard_and_bad_codes(tmp_path):
    write(tmp_path / "e", [])
    assert len(BinaryShard(tmp_path / "e")) == 0 and list(read_shard(tmp_path / "e.bin")) == []
    with ShardWriter(tmp_path / "n", **MUSIC) as writer, pytest.raises(ValueError):
        writer.add([-1], "negative")


def test_a_folder_stands_for_its_shards_and_jsonl_files(tmp_path):
    from anygpt.data.shards import expand_folders

    write(tmp_path / "out" / "shard-00001")
    write(tmp_path / "out" / "shard-00000")
    write(tmp_path / "out" / "extra", format="jsonl")
    (tmp_path / "out" / "tokenize_report.json").write_text("{}")
    single = str(tmp_path / "one.jsonl")
    assert expand_folders([str(tmp_path / "out"), single]) == [
        str(tmp_path / "out" / "extra.jsonl"), str(tmp_path / "out" / "shard-00000"),
        str(tmp_path / "out" / "shard-00001"), single]  # no .texts.jsonl sidecars, no reports
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnyGPTError, match="holds no token shards"):
        expand_folders([str(tmp_path / "empty")])
