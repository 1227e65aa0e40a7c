"""Chat training records of the demo world: the conversations of ``anygpt.demo.conversations`` with their media as
token strings, in the chat data format (``anygpt.data.sft``) that the demo LM's pretraining mixture also reads.

A conversation's attachment is looked up in the token shards of its corpus split by its ``corpus.index`` (the shards
hold the corpus in order; the plan's captions are checked against the shard texts); a question asked aloud and an
answer to be spoken are rendered by espeak-ng and encoded by the speech codec. The user message is built exactly as
``anygpt chat`` builds it (``anygpt.lm.chat.user_message``); a spoken answer is its text, a space, then its speech
span, as the chat history writes an assistant turn with media::

    {"id": "train-000003", "conversation": [{"role": "user", "message": "<soim>...<eoim> what colour is the star"},
     {"role": "assistant", "message": "the star is red"}], "must_name": ["red"]}

    python -m anygpt.demo.chat_records data/demo/chat/train.jsonl --split train --count 12000 \\
        --images data/demo/shards_image/train --music data/demo/shards_music/train \\
        --speech-cache data/demo/chat/speech_codes.jsonl.gz

The speech codes depend only on the texts, voices and the speech codec, not on the image or music codecs, so a cache
built once (on any machine) serves every rebuild after the image codec changed, without espeak-ng.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from anygpt import AnyGPTError
from anygpt.data.shards import BinaryShard, expand_folders, token_string

SPEECH_TAGS = ("🗣️", "<sosp>", "<eosp>")
SPEECH_CODEC = {"config": {"n_filters": 16, "dimension": 128, "semantic_dimension": 64, "codebook_size": 256,
                           "lstm_layers": 1, "harmonics": 64},
                "checkpoint": str(Path(__file__).with_name("weights") / "speech_codec.safetensors"), "decoder": None}


def shard_spans(folder: str | Path) -> tuple[list[str], list[str]]:
    """Token strings and texts of every record of a split's token shards, in order."""
    stems = [s for s in expand_folders([str(folder)]) if not s.endswith(".jsonl")]
    if not stems:
        raise AnyGPTError(f"no token shards in {folder}")
    spans, texts = [], []
    for stem in stems:
        shard = BinaryShard(stem)
        tags = [shard.meta[key] for key in ("token_prefix", "start_tag", "end_tag")]
        for codes, text in shard:
            spans.append(token_string(codes, *tags))
            texts.append(text)
    return spans, texts


def _attachments(records: list[dict], seed: int, split: str, images: str, music: str) -> list[tuple[str, str]]:
    """``(modality, token string)`` of each record's attachment, checked against the corpus plan's captions."""
    from anygpt.demo.melodies import plan as melody_plan
    from anygpt.demo.scenes import plan as scene_plan

    out = []
    for modality, folder, plan in (("image", images, scene_plan), ("music", music, melody_plan)):
        wanted = [r["attachment"]["corpus"]["index"] for r in records if r["attachment"]["modality"] == modality]
        if not wanted:
            continue
        spans, texts = shard_spans(folder)
        planned = plan(seed, {split: max(wanted) + 1})[split]
        if len(spans) <= max(wanted):
            raise AnyGPTError(f"{folder}: {len(spans)} records, but conversations ask for item {max(wanted)}")
        for index in sorted(set(wanted)):
            if planned[index]["text"] != texts[index]:
                raise AnyGPTError(f"{folder}: record {index} is {texts[index]!r}, the {split} corpus plan of seed "
                                  f"{seed} has {planned[index]['text']!r} there (shards of another corpus?)")
        out.append((modality, spans))
    found = dict(out)
    return [(r["attachment"]["modality"], found[r["attachment"]["modality"]][r["attachment"]["corpus"]["index"]])
            for r in records]


def _speak(job: tuple[str, dict]) -> tuple:
    from anygpt.demo.speech_corpus import speak

    text, voice = job
    return speak({"text": text, **voice})[0]


def _key(job: tuple[str, dict]) -> str:
    return json.dumps([job[0], job[1]], sort_keys=True)


def read_cache(path: str | Path | None) -> dict[str, list[int]]:
    """Speech codes by ``(text, voice)`` from a cache file (gzip JSON lines ``{"key", "codes"}``); {} if none."""
    import gzip

    if path is None or not Path(path).is_file():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {line["key"]: line["codes"] for line in map(json.loads, f)}


def spoken_spans(jobs: list[tuple[str, dict]], codec_args: dict, workers: int = 1, batch: int = 64,
                 cache: str | Path | None = None) -> list[str]:
    """Speech token strings of ``(text, voice)`` jobs: espeak-ng renderings (``workers`` processes) encoded by the
    speech codec (on the GPU when there is one). With ``cache``, codes found there are reused and the new ones are
    added to it, so a later build needs neither espeak-ng nor the codec."""
    import gzip

    import torch

    found = read_cache(cache)
    missing = sorted({_key(job) for job in jobs} - set(found))
    if missing:
        from anygpt.tokenizers.speech import SpeechTokenizerCodec

        codec = SpeechTokenizerCodec(**codec_args)
        if torch.cuda.is_available():
            codec = codec.cuda()
        todo = [tuple(json.loads(key)) for key in missing]
        with ProcessPoolExecutor(max(1, workers)) as pool:
            waves = list(pool.map(_speak, todo, chunksize=16))
        for start in range(0, len(waves), batch):
            items = [(torch.from_numpy(w)[None], 16000) for w in waves[start:start + batch]]
            for key, codes in zip(missing[start:start + batch], codec.encode(items)):
                found[key] = codes.tolist()
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(cache, "wt", encoding="utf-8") as f:
                for key in sorted(found):
                    f.write(json.dumps({"key": key, "codes": found[key]}, ensure_ascii=False) + "\n")
    return [token_string(found[_key(job)], *SPEECH_TAGS) for job in jobs]


def build(out: str | Path, split: str, count: int, images: str, music: str, seed: int = 0,
          codec_args: dict | None = None, workers: int = 1, speech_cache: str | Path | None = None) -> dict:
    """Write ``count`` conversations of ``split`` to ``out`` (JSONL); returns a summary. ``speech_cache``: see
    :func:`spoken_spans`."""
    from anygpt.demo.conversations import plan
    from anygpt.demo.speech_corpus import voice_split
    from anygpt.lm.chat import user_message

    records = plan(seed, split, count)
    attachments = _attachments(records, seed, split, images, music)
    answer_voice = {**{k: v for k, v in voice_split(seed)[0][0].items() if k != "name"},
                    "voice": voice_split(seed)[0][0]["name"], "rate": 170}
    jobs, where = [], []
    for i, record in enumerate(records):
        if record["ask"] == "speech":
            jobs.append((record["question"], record["voice"]))
            where.append((i, "question"))
        if record["speak"]:
            jobs.append((record["answer"], answer_voice))
            where.append((i, "answer"))
    spans = dict(zip(where, spoken_spans(jobs, codec_args or SPEECH_CODEC, workers, cache=speech_cache)))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for i, (record, attachment) in enumerate(zip(records, attachments)):
            media = [attachment] + ([("speech", spans[i, "question"])] if (i, "question") in spans else [])
            text = "" if (i, "question") in spans else record["question"]
            answer = record["answer"] + (f" {spans[i, 'answer']}" if (i, "answer") in spans else "")
            line = {"id": record["id"], "conversation": [{"role": "user", "message": str(user_message(text, media))},
                                                         {"role": "assistant", "message": answer}],
                    "must_name": record["must_name"]}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {"records": len(records), "spoken_questions": sum(1 for _, k in where if k == "question"),
            "spoken_answers": sum(1 for _, k in where if k == "answer"), "out": str(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m anygpt.demo.chat_records", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the JSONL file to write")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--images", required=True, help="the split's image token shards (stage tokenize_image)")
    parser.add_argument("--music", required=True, help="the split's music token shards (stage tokenize_music)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speech-codec", default=SPEECH_CODEC["checkpoint"], help="speech codec weights")
    parser.add_argument("--workers", type=int, default=1, help="espeak-ng processes")
    parser.add_argument("--speech-cache", help="codes of spoken turns by text and voice (gzip JSON lines): read, and "
                                               "extended with what was missing")
    args = parser.parse_args(argv)
    try:
        summary = build(args.out, args.split, args.count, args.images, args.music, args.seed,
                        {**SPEECH_CODEC, "checkpoint": args.speech_codec}, args.workers, args.speech_cache)
    except AnyGPTError as err:
        raise SystemExit(f"chat_records: {err}") from None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
