"""Text-to-speech records with a voice prompt, for the demo LM to speak in the voice it is shown.

The demo codec's RVQ-1 codes carry the speaker as well as the phonemes (SoundStorm, given voice A's prompt, keeps A's
voice in 70 % of held-out pairs from A's own codes and in 52 % from B's), so voice cloning needs an LM that chooses
codes in the prompt's voice. Each record pairs a training utterance with the first ``prompt_codes`` RVQ-1 codes of
another utterance by the same voice (``UnifiedLM(voice_in_prompt=True)`` shows the LM a request's voice prompt the
same way, cut to the codec's ``prompt_seconds``)::

    {"text": "the red ball is on the table", "speech": "<sosp><🗣️12>...<eosp>", "voice_prompt": "<sosp>...<eosp>"}

Who speaks each utterance comes from the corpus plan (``speech_corpus.plan``: no audio needed), matched to the
token shards record by record; a text that differs stops the build with the first mismatch.

    python -m anygpt.demo.voice_records data/demo/shards/train data/demo/voice_records/train.jsonl --split train
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from anygpt import AnyGPTError
from anygpt.data.shards import BinaryShard, expand_folders, token_string
from anygpt.demo.speech_corpus import plan


def build(shards: str | Path, out: str | Path, split: str = "train", seed: int = 0,
          counts: dict[str, int] | None = None, prompt_codes: int = 150) -> dict:
    """Write ``out`` (JSONL) from the token shards of one corpus split; returns a summary.

    Args:
        shards: The split's shard folder (``anygpt tokenize`` output) or one shard.
        out: The JSONL file to write.
        split: Which split of the corpus plan the shards hold (``train``, ``val`` or ``test``).
        seed: The corpus seed.
        counts: The corpus's split sizes (``speech_corpus.build``'s ``train``, ``val``, ``test``); None: the
            defaults, 60000 / 500 / 500.
        prompt_codes: Codes kept of each voice prompt (150: 3 s at 50 codes/s).

    Raises:
        AnyGPTError: No shards, a split the plan lacks, or shards that do not hold the plan's texts in order.
    """
    counts = counts or {"train": 60000, "val": 500, "test": 500}
    planned = plan(seed, counts).get(split)
    if planned is None:
        raise AnyGPTError(f"split {split!r} is not in the corpus plan ({', '.join(counts)})")
    if prompt_codes < 1:
        raise AnyGPTError(f"prompt_codes must be >= 1, got {prompt_codes}")
    stems = [s for s in expand_folders([str(shards)]) if not s.endswith(".jsonl")]
    if not stems:
        raise AnyGPTError(f"no token shards in {shards}")
    spans, texts, tags = [], [], None
    for stem in stems:
        shard = BinaryShard(stem)
        tags = tags or [shard.meta[key] for key in ("token_prefix", "start_tag", "end_tag")]
        for codes, text in shard:
            spans.append(codes)
            texts.append(text)
    if len(spans) > len(planned):
        raise AnyGPTError(f"{shards}: {len(spans)} records, but the {split} split plans {len(planned)}")
    for i, (text, record) in enumerate(zip(texts, planned)):
        if text != record["text"]:
            raise AnyGPTError(f"{shards}: record {i} says {text!r}, the plan {record['text']!r} (another seed or "
                              f"split sizes?)")
    by_voice: dict[str, list[int]] = {}
    for i in range(len(spans)):
        by_voice.setdefault(planned[i]["voice"], []).append(i)
    rng = random.Random(f"demo-voice-prompts:{seed}:{split}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w", encoding="utf-8") as handle:
        for i, codes in enumerate(spans):
            others = [j for j in by_voice[planned[i]["voice"]] if j != i]
            if not others:
                continue
            prompt = spans[rng.choice(others)][:prompt_codes]
            handle.write(json.dumps({"text": texts[i], "speech": token_string(codes, *tags),
                                     "voice_prompt": token_string(prompt, *tags)}, ensure_ascii=False) + "\n")
            written += 1
    return {"records": written, "skipped": len(spans) - written, "voices": len(by_voice), "out": str(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Text-to-speech records with a voice prompt from the demo's shards.")
    parser.add_argument("shards")
    parser.add_argument("out")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--prompt-codes", type=int, default=150)
    args = parser.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(json.dumps(build(args.shards, args.out, args.split, args.seed, counts, args.prompt_codes)))


if __name__ == "__main__":
    main()
