"""Running a protocol: generate for every pinned sample, score, write; a rerun skips what is done.

``output_dir/samples.jsonl`` gets one line per finished sample (``id``, ``index``, ``reference``, ``hypothesis``,
``scores``, ``input``) as soon as its batch is done, so an interrupted run loses at most one batch; a rerun reads
it, skips those ids and appends the rest. Then ``summary.json`` (corpus-level metrics over every finished sample,
counts, the protocol) and ``table.md`` are written from ``samples.jsonl`` alone, in the sample list's order, so a
resumed run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from anygpt.cli_classes import load_predict_model
from anygpt.evaluation.protocol import TASKS, EvalProtocol
from anygpt.evaluation.samples import Sample, prepare_audio, read_samples
from anygpt.evaluation.scorers import METRICS, NORMALIZERS, per_sample


def evaluate(protocol: EvalProtocol, model=None) -> dict:
    """Run ``protocol`` (with ``model``, or the one its ``model_config`` builds) and return the summary."""
    out = Path(protocol.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_samples(protocol.samples, protocol.limit)
    done = _finished(out / "samples.jsonl")
    todo = [s for s in samples if s.id not in done]
    skipped = []
    if todo:
        for sample in todo:
            prepare_audio(sample, protocol.data_root, out / "inputs", protocol.download_hint)
        skipped = [s for s in todo if s.problem]
        runnable = [s for s in todo if not s.problem]
        if runnable:
            model = model if model is not None else load_predict_model(protocol.model_config, protocol.overrides)
            apply_generation(model, protocol.generation)
            _generate(protocol, model, runnable, out / "samples.jsonl")
    summary = _summarise(protocol, samples, _finished(out / "samples.jsonl"), skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table(summary) + "\n", encoding="utf-8")
    return summary


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


def _generate(protocol: EvalProtocol, model, samples: list[Sample], path: Path) -> None:
    import torch
    from tqdm import tqdm

    from anygpt.data.requests import read_requests

    source, target = TASKS[protocol.task]
    normalize = NORMALIZERS[protocol.normalizer]
    with tqdm(total=len(samples), desc=f"evaluate {protocol.task}", unit="sample") as bar:
        for start in range(0, len(samples), protocol.batch_size):
            batch = samples[start: start + protocol.batch_size]
            requests = read_requests([f"{source}|{target}|{s.input_path.resolve()}" for s in batch])
            for request, sample in zip(requests, batch):
                request.seed = protocol.seed + sample.index
            with torch.inference_mode():
                answers = model.predict_step(requests)
            lines = []
            for sample, answer in zip(batch, answers):
                hypothesis = answer.get("text") or "" if answer.get("status") == "ok" else ""
                scores = per_sample(protocol.task, protocol.metrics, normalize(sample.reference),
                                    normalize(hypothesis))
                lines.append({"id": sample.id, "index": sample.index, "reference": sample.reference,
                              "hypothesis": hypothesis, "scores": scores, "status": answer.get("status"),
                              "error": answer.get("error"), "input": str(sample.input_path)})
            with path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            bar.update(len(batch))


def _summarise(protocol: EvalProtocol, samples: list[Sample], done: dict[str, dict], skipped: list[Sample]) -> dict:
    normalize = NORMALIZERS[protocol.normalizer]
    finished = [done[s.id] for s in samples if s.id in done]
    references = [normalize(line["reference"]) for line in finished]
    hypotheses = [normalize(line["hypothesis"]) for line in finished]
    metrics = {name: METRICS[protocol.task][name](references, hypotheses) if finished else None
               for name in protocol.metrics}
    return {"task": protocol.task, "metrics": metrics, "samples": len(samples), "scored": len(finished),
            "failed": sum(line["status"] != "ok" for line in finished),
            "skipped": [{"id": s.id, "problem": s.problem} for s in skipped],
            "protocol": {k: v for k, v in asdict(protocol).items() if k != "output_dir"}}


def table(summary: dict) -> str:
    """The summary as a Markdown table: one row per metric (percent), with the sample counts."""
    rows = ["| task | metric | value | scored / samples | failed | skipped |", "|---|---|---|---|---|---|"]
    for name, value in summary["metrics"].items():
        shown = "n/a" if value is None else f"{100 * value:.2f} %"
        rows.append(f"| {summary['task']} | {name} | {shown} | {summary['scored']} / "
                    f"{summary['samples']} | {summary['failed']} | {len(summary['skipped'])} |")
    return "\n".join(rows)
