"""Running a protocol: generate for every pinned sample, score, write; a rerun skips what is done.

``output_dir/samples.jsonl`` gets one line per finished sample (``id``, ``index``, ``reference``, ``hypothesis``,
``scores``, ``input``) as soon as its batch is done, so an interrupted run loses at most one batch; a rerun reads
it, skips those ids and appends the rest. Then ``summary.json`` (corpus-level metrics over every finished sample,
counts, the protocol) and ``table.md`` are written from ``samples.jsonl`` alone, in the sample list's order, so a
resumed run ends with the same files as an uninterrupted one; ``run.json`` keeps the protocol, and a rerun that
changes what decides a result (model, decoding, seed, metrics, ...) is refused. A sample whose request fails (an
unreadable file, say) is written with its error, not scored, and listed under ``failed``; one that cannot be made
at all (a missing file) is listed under ``skipped``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from anygpt import AnyGPTError
from anygpt.cli_classes import load_predict_model
from anygpt.evaluation.outputs import Outputs
from anygpt.evaluation.protocol import TASKS, EvalProtocol
from anygpt.evaluation.samples import Sample, prepare_audio, prepare_reference, read_samples
from anygpt.evaluation.scorers import METRICS, WORLD_METRICS, normalizer, per_sample


def evaluate(protocol: EvalProtocol, model=None) -> dict:
    """Run ``protocol`` (with ``model``, or the one its ``model_config`` builds) and return the summary."""
    out = Path(protocol.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_samples(protocol.samples, protocol.limit, protocol.data_root, protocol.download_hint,
                           protocol.expected_count, next(m for m in TASKS[protocol.task] if m != "text"))
    _world_samples(protocol, samples)
    normalize = normalizer(protocol.normalizer, protocol.normalizer_mapping)  # fails early where it cannot load
    _same_run(out, protocol)
    done = _finished(out / "samples.jsonl")
    todo = [s for s in samples if s.id not in done]
    skipped = []
    if todo:
        key = "audio" if protocol.task == "asr" else "prompt"
        for sample in todo:
            if protocol.task == "chat":
                from anygpt.demo.conversations import materialize

                sample.conversation = materialize(sample.source, out / "inputs")
                turn = sample.conversation["turns"][0]
                sample.input_path = Path(turn.get("image") or turn.get("music"))
                continue
            if protocol.task == "t2m":
                continue  # a caption is all it needs (the reference music is not scored against)
            if protocol.task in ("t2i", "caption", "m2t"):
                reads = protocol.task in ("caption", "m2t")  # the picture or music is the input: made if demo
                prepare_reference(sample, protocol.data_root, protocol.download_hint,
                                  out / "inputs" if reads else None, "music" if protocol.task == "m2t" else "image")
                if reads and sample.input_path is None and not sample.problem:
                    sample.problem = "no input"
                continue
            following = samples[(sample.index + 1) % len(samples)].source
            prepare_audio(sample, protocol.data_root, out / "inputs", protocol.download_hint, key, following,
                          protocol.prompt_seconds)
        skipped = [s for s in todo if s.problem]
        runnable = [s for s in todo if not s.problem]
        if runnable:
            model = model if model is not None else load_predict_model(protocol.model_config, protocol.overrides)
            apply_generation(model, protocol.generation)
            _generate(protocol, model, runnable, out / "samples.jsonl", normalize)
    summary = _summarise(protocol, samples, _finished(out / "samples.jsonl"), skipped, normalize)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table(summary) + "\n", encoding="utf-8")
    return summary


#: What a protocol may change between a run and its resumption (the rest decides every sample's result).
RESUMABLE_CHANGES = {"output_dir", "data_root", "limit", "batch_size", "download_hint", "expected_count"}


def _world_samples(protocol: EvalProtocol, samples: list[Sample]) -> None:
    """Refuse metrics of the demo world's analysers on samples that are not its held-out lines."""
    world = sorted(WORLD_METRICS & set(protocol.metrics))
    key = "must_name" if protocol.task == "chat" else "attributes"
    stranger = next((s for s in samples if key not in s.source), None)
    if world and stranger is not None:
        raise AnyGPTError(f"metrics: {world[0]!r} judges the demo world's held-out lines (their {key}); sample "
                          f"{stranger.id!r} of {protocol.samples} has none")


def _same_run(out: Path, protocol: EvalProtocol) -> None:
    """Record the protocol in ``run.json`` on a first run; on a rerun, refuse one that would mix results."""
    path = out / "run.json"
    settings = {k: v for k, v in asdict(protocol).items() if k not in RESUMABLE_CHANGES}
    if not path.is_file():
        path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        raise AnyGPTError(f"output_dir: {out} holds a run of another protocol (changed: {', '.join(changed)}); "
                          f"use another output_dir, or delete it to start over")


def apply_generation(model, generation: dict[str, dict]) -> None:
    """Set the protocol's decoding over the model's presets, field by field."""
    from anygpt.lm.decoding.presets import GenerationPreset

    for target, values in generation.items():
        base = asdict(model.presets.get(target, GenerationPreset()))
        model.presets[target] = GenerationPreset(**{**base, **values})


def _finished(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["id"]: line for line in lines}


def _request(task: str, sample: Sample) -> str:
    """The request line of a sample: a text source is its reference; a media source, its input file; tts adds
    its voice prompt."""
    source, target = TASKS[task]
    content = sample.reference if source == "text" else sample.input_path.resolve()
    prompt = f"|{sample.input_path.resolve()}" if task == "tts" else ""
    return f"{source}|{target}|{content}{prompt}"


def _requests(protocol: EvalProtocol, batch: list[Sample]) -> list:
    from anygpt.data.requests import read_requests

    requests = read_requests([_request(protocol.task, s) for s in batch])
    for request, sample in zip(requests, batch):
        request.seed, request.instruction = protocol.seed + sample.index, protocol.instruction
    return requests


def _chat(model, batch: list[Sample], seed: int) -> list[dict]:
    """The replies to a batch of chat samples, sample ``i`` seeded with ``seed + i``."""
    from anygpt.data.chat import parse_conversation
    from anygpt.lm.chat_session import answer

    return answer(model, [parse_conversation({**s.conversation, "seed": seed + s.index}, n, set(model.codecs))
                          for n, s in enumerate(batch)])


def _generate(protocol: EvalProtocol, model, samples: list[Sample], path: Path, normalize) -> None:
    import torch
    from tqdm import tqdm

    outputs_of = Outputs(protocol, model)
    with tqdm(total=len(samples), desc=f"evaluate {protocol.task}", unit="sample") as bar:
        for start in range(0, len(samples), protocol.batch_size):
            batch = samples[start: start + protocol.batch_size]
            with torch.inference_mode():
                answers = _chat(model, batch, protocol.seed) if protocol.task == "chat" else \
                    model.predict_step(_requests(protocol, batch))
            outputs = outputs_of(path.parent, batch, answers)
            lines = []
            for sample, answer, (hypothesis, extra) in zip(batch, answers, outputs):
                output = extra.pop("output", None)
                scores = per_sample(protocol.task, protocol.metrics, normalize(sample.reference),
                                    normalize(hypothesis))
                line = {"id": sample.id, "index": sample.index, "reference": sample.reference,
                        "hypothesis": hypothesis, "scores": {**scores, **extra}, "status": answer.get("status"),
                        "error": answer.get("error"), "instruction": answer.get("instruction"),
                        "input": str(sample.input_path) if sample.input_path else None}
                if "references" in sample.source:
                    line["references"] = sample.source["references"]
                lines.append(line | ({"output": output} if output else {}))
            with path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            bar.update(len(batch))


def _summarise(protocol: EvalProtocol, samples: list[Sample], done: dict[str, dict], skipped: list[Sample],
               normalize) -> dict:
    written = [done[s.id] for s in samples if s.id in done]
    finished = [line for line in written if line["status"] == "ok"]  # a request that failed is not scored
    references = [normalize(line["reference"]) for line in finished]
    hypotheses = [normalize(line["hypothesis"]) for line in finished]
    metrics = {}
    if protocol.task in ("caption", "m2t") and finished:
        from anygpt.evaluation.caption_metrics import bleu4, cider_d, tokenize

        refs = [[tokenize(r) for r in line.get("references", [line["reference"]])] for line in finished]
        hyps = [tokenize(line["hypothesis"]) for line in finished]
        found = {"cider": cider_d(refs, hyps)[0], "bleu4": bleu4(refs, hyps)}
        metrics = {name: found[name] for name in protocol.metrics if name in found}
    for name in protocol.metrics:
        if name in metrics:
            continue
        if not finished:
            metrics[name] = None
        elif METRICS[protocol.task][name] is None:  # a mean of the samples' own scores (sim)
            values = [line["scores"][name] for line in finished if name in line["scores"]]
            metrics[name] = sum(values) / len(values) if values else None
        else:
            metrics[name] = METRICS[protocol.task][name](references, hypotheses)
    return {"task": protocol.task, "metrics": metrics, "samples": len(samples), "scored": len(finished),
            "failed": [{"id": line["id"], "error": line["error"]} for line in written if line["status"] != "ok"],
            "skipped": [{"id": s.id, "problem": s.problem} for s in skipped],
            "protocol": {k: v for k, v in asdict(protocol).items() if k != "output_dir"}}


def table(summary: dict) -> str:
    """The summary as a Markdown table, one row per metric with the sample counts: error rates and the demo
    world's shares judged right in percent, CIDEr and BLEU-4 times 100 (as papers print them), cosines as they
    are."""
    rows = ["| task | metric | value | scored / samples | failed | skipped |", "|---|---|---|---|---|---|"]
    for name, value in summary["metrics"].items():
        if value is None:
            shown = "n/a"
        elif name in ("wer", "cer"):
            shown = f"{100 * value:.2f} %"
        elif name in WORLD_METRICS:
            shown = f"{100 * value:.1f} %"
        elif name in ("cider", "bleu4"):
            shown = f"{100 * value:.1f}"
        else:
            shown = f"{value:.3f}"
        rows.append(f"| {summary['task']} | {name} | {shown} | {summary['scored']} / "
                    f"{summary['samples']} | {len(summary['failed'])} | {len(summary['skipped'])} |")
    return "\n".join(rows)
