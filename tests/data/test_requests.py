"""Request parsing: the original's line format, JSONL records, and one clear error per bad request."""

from __future__ import annotations

import json

import pytest

from anygpt import AnyGPTError
from anygpt.data.requests import RequestDataModule, parse_line, parse_record, read_requests


def test_line_fields_follow_the_original_format():
    r = parse_line("text|speech|Hello there.|voice.wav", 3)
    assert (r.index, r.source, r.target, r.content, r.voice_prompt, r.error) == (3, "text", "speech", "Hello there.", "voice.wav", None)
    r = parse_line("MUSIC|text|song.wav", 0)
    assert (r.source, r.target, r.content) == ("music", "text", "song.wav")


@pytest.mark.parametrize("line, fragment", [
    ("text|music", "expected source|target|content"),
    ("text|music|   ", "empty content"),
    ("text|text|hello", "source equals target"),
    ("music|image|a.wav", "one side must be text"),
    ("text|music|a|b.wav", "voice prompt is only read for text|speech"),
    ("a|b|c|d|e", "too many"),
])
def test_bad_lines_fail_alone_with_one_line(line, fragment):
    r = parse_line(line, 7)
    assert r.error and fragment in r.error and r.error.startswith("request 7:") and "\n" not in r.error


def test_jsonl_records_and_errors(tmp_path):
    path = tmp_path / "req.jsonl"
    path.write_text("\n".join([
        json.dumps({"source": "text", "target": "music", "content": "a | piped caption", "seed": 5}),
        "{not json",
        json.dumps({"source": "text", "target": "music", "content": "x", "colour": 1}),
        json.dumps({"source": "text", "target": "music", "content": "x", "seed": "five"}),
    ]) + "\n")
    items = read_requests(["music|text|a.wav"], str(path))  # the file replaces the list
    assert [r.index for r in items] == [0, 1, 2, 3]
    assert items[0].content == "a | piped caption" and items[0].seed == 5
    assert "bad JSON" in items[1].error and "unknown fields" in items[2].error and "seed" in items[3].error
    assert parse_record({"source": "text", "target": "music", "content": "ok"}, 0).error is None


def test_text_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "req.txt"
    path.write_text("# comment\n\ntext|music|one\ntext|music|two\n")
    assert [r.content for r in read_requests([], str(path))] == ["one", "two"]


def test_data_module_seeds_and_errors(tmp_path):
    dm = RequestDataModule(requests=["text|music|a", {"source": "text", "target": "music", "content": "b", "seed": 9}],
                           batch_size=1, seed=100)
    dm.setup("predict")
    assert [r.seed for r in dm.items] == [100, 9]
    assert [len(b) for b in dm.predict_dataloader()] == [1, 1]
    with pytest.raises(AnyGPTError, match="requests file not found"):
        RequestDataModule(requests_file=str(tmp_path / "nope.txt")).setup("predict")
    with pytest.raises(AnyGPTError, match="no requests"):
        RequestDataModule().setup("predict")
