"""Voice-prompt records for the demo LM: each utterance's codes with the start of another utterance by its voice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anygpt import AnyGPTError
from anygpt.data.shards import ShardWriter, parse_token_string
from anygpt.demo.speech_corpus import plan
from anygpt.demo.voice_records import build

COUNTS = {"train": 300, "val": 4, "test": 4}


def write_shards(folder, texts: list[str], per_shard: int = 128) -> list[list[int]]:
    """Shards of the given texts whose codes name their record: record i holds i % 256, (i * 7) % 256, ... ."""
    spans = [[(i * k) % 256 for k in range(1, 6 + i % 5)] for i in range(len(texts))]
    for start in range(0, len(texts), per_shard):
        with ShardWriter(folder / f"shard-{start // per_shard:05d}", "speech", "🗣️", "<sosp>", "<eosp>") as shard:
            for i in range(start, min(start + per_shard, len(texts))):
                shard.add(spans[i], texts[i])
    return spans


def test_each_prompt_is_another_utterance_of_the_same_voice(tmp_path):
    planned = plan(0, COUNTS)["train"]
    spans = write_shards(tmp_path / "shards", [r["text"] for r in planned])
    summary = build(tmp_path / "shards", tmp_path / "out.jsonl", counts=COUNTS, prompt_codes=4)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    voices = [r["voice"] for r in planned]
    alone = {v for v in voices if voices.count(v) == 1}
    assert summary["records"] == len(records) == len(planned) - len([v for v in voices if v in alone])
    assert summary["voices"] == len(set(voices))
    sources = []
    for record in records:
        i = next(k for k, r in enumerate(planned) if r["text"] == record["text"] and voices[k] not in alone)
        assert parse_token_string(record["speech"])[0].tolist() == spans[i]
        prompt = parse_token_string(record["voice_prompt"])[0].tolist()
        matches = [j for j, span in enumerate(spans) if span[:4] == prompt and voices[j] == voices[i]]
        assert matches and i not in matches, (i, prompt)
        sources.append(matches[0])
    assert len(set(sources)) > len(records) // 2  # prompts are drawn, not one per voice
    again = tmp_path / "again.jsonl"
    build(tmp_path / "shards", again, counts=COUNTS, prompt_codes=4)
    assert again.read_bytes() == (tmp_path / "out.jsonl").read_bytes()  # seeded


def test_shards_of_another_plan_are_one_clear_error(tmp_path):
    texts = [r["text"] for r in plan(0, COUNTS)["train"]]
    texts[5] = "the plan never said this"
    write_shards(tmp_path / "shards", texts)
    with pytest.raises(AnyGPTError, match="record 5 says 'the plan never said this'"):
        build(tmp_path / "shards", tmp_path / "out.jsonl", counts=COUNTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnyGPTError, match="no token shards"):
        build(tmp_path / "empty", tmp_path / "out.jsonl", counts=COUNTS)
    with pytest.raises(AnyGPTError, match="split 'dev' is not in the corpus plan"):
        build(tmp_path / "shards", tmp_path / "out.jsonl", split="dev", counts=COUNTS)


def test_the_voices_come_from_espeak_data_path_where_it_is_set(tmp_path, monkeypatch):
    """A machine without the espeak-ng wheel plans the same voices from a copy of its voices/!v names (stage.sh
    part2_lm on the GPU machine)."""
    import espeakng_loader

    from anygpt.demo.espeak import variants

    names = sorted(p.name for p in (Path(espeakng_loader.get_data_path()) / "voices" / "!v").iterdir())
    (tmp_path / "voices" / "!v").mkdir(parents=True)
    for name in names:
        (tmp_path / "voices" / "!v" / name).touch()
    expected = plan(0, COUNTS)
    monkeypatch.setenv("ESPEAK_DATA_PATH", str(tmp_path))
    assert plan(0, COUNTS) == expected
    (tmp_path / "voices" / "!v" / names[0]).unlink()
    assert variants() == names[1:]
