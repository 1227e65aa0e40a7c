"""What the evaluation tests share: the repository root, a protocol over the demo's held-out list, a counting
model wrapper."""

from __future__ import annotations

from pathlib import Path

from anygpt.evaluation.protocol import EvalProtocol

ROOT = Path(__file__).resolve().parents[2]
GREEDY = {"text": {"num_beams": 1, "do_sample": False, "max_new_tokens": 40}}


class Counting:
    """The model, counting the requests it is asked to answer."""

    def __init__(self, model):
        self.model, self.presets, self.asked = model, model.presets, 0

    def predict_step(self, requests):
        self.asked += len(requests)
        return self.model.predict_step(requests)


def protocol(tmp_path: Path, **kwargs) -> EvalProtocol:
    args = {"task": "asr", "model_config": "configs/demo.yaml", "samples": str(ROOT / "anygpt/demo/heldout.jsonl"),
            "output_dir": str(tmp_path / "out"), "limit": 4, "batch_size": 2, "generation": GREEDY,
            "metrics": ["wer", "cer"]}
    return EvalProtocol(**{**args, **kwargs})
