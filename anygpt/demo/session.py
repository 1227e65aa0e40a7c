"""The demo model as a Python object: recognise speech files and speak texts, through the same predict path as
``anygpt predict --config configs/demo.yaml``.

    from anygpt.demo.session import DemoSession
    demo = DemoSession()                       # configs/demo.yaml, the shipped weights, CPU
    demo.transcribe(["anygpt/demo/clips/heldout_0.wav"])
    audio = demo.synthesize(["the red ball is under the table"], voice_prompts=["anygpt/demo/clips/heldout_1.wav"])
    demo.describe(["scene.png"], "image"); demo.generate(["a big red star in the middle"], "image")
    demo.chat([{"turns": [{"role": "user", "image": "scene.png", "text": "what colour is the star"}]}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from anygpt import AnyGPTError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo.yaml"
WEIGHTS = Path(__file__).with_name("weights")


class DemoSession:
    """A predict config's model, loaded once (no trainer, no writer).

    Args:
        config: The predict config (relative paths in it are taken from the repository root).
        overrides: Further command-line style arguments, e.g. ``["--model.backbone", "runs/demo/lm_export"]``.
        batch_size: Requests answered together.
    """

    def __init__(self, config: str | Path = CONFIG, overrides: Sequence[str] = (), batch_size: int = 8):
        from anygpt.cli_classes import load_predict_model
        from anygpt.quiet import quiet_third_party

        quiet_third_party()
        self.model = load_predict_model(config, overrides, root=ROOT)  # its paths are the repository root's
        self.batch_size = batch_size

    def _answer(self, lines: list[str], seed: int) -> list[dict]:
        from anygpt.data.requests import read_requests

        requests = read_requests(lines)
        for i, request in enumerate(requests):
            request.seed = seed + i
        out = []
        with torch.inference_mode():
            for start in range(0, len(requests), self.batch_size):
                out += self.model.predict_step(requests[start: start + self.batch_size])
        failed = [r for r in out if r["status"] != "ok"]
        if failed:
            raise AnyGPTError(f"request {failed[0]['request']!r} failed: {failed[0].get('error')}")
        return out

    def transcribe(self, paths: Sequence[str | Path], seed: int = 0) -> list[str]:
        """The text the model hears in each speech file."""
        return [r["text"] for r in self._answer([f"speech|text|{Path(p).resolve()}" for p in paths], seed)]

    def synthesize(self, texts: Sequence[str], voice_prompts: Sequence[str | Path | None] | None = None,
                   seed: int = 0) -> list[torch.Tensor]:
        """16 kHz speech ``[1, L]`` for each text, in the voice of its prompt file (None: a random voice)."""
        prompts = list(voice_prompts or [None] * len(texts))
        if len(prompts) != len(texts):
            raise AnyGPTError(f"voice_prompts: {len(prompts)} for {len(texts)} texts")
        lines = [f"text|speech|{t}" + (f"|{Path(p).resolve()}" if p else "") for t, p in zip(texts, prompts)]
        return [r["media"] for r in self._answer(lines, seed)]

    def describe(self, paths: Sequence[str | Path], modality: str, seed: int = 0) -> list[str]:
        """The caption the model writes for each image or music file (``modality``: image or music)."""
        return [r["text"] for r in self._answer([f"{modality}|text|{Path(p).resolve()}" for p in paths], seed)]

    def generate(self, texts: Sequence[str], modality: str, seed: int = 0) -> list:
        """What the model makes of each caption: PIL images (``image``) or 16 kHz waveforms ``[1, L]`` (``music``,
        ``speech``); ``seed + i`` seeds text ``i``."""
        return [r["media"] for r in self._answer([f"text|{modality}|{t}" for t in texts], seed)]

    def chat(self, conversations: Sequence[dict | list], seed: int = 0) -> list[dict]:
        """Replies to chat-format conversations (``anygpt.data.chat``), one response per conversation, each with
        its ``replies`` (``text`` and ``media``); conversation ``i`` without a seed of its own gets ``seed + i``."""
        from anygpt.data.chat import parse_conversation
        from anygpt.lm.chat_session import answer

        parsed = []
        for i, line in enumerate(conversations):
            line = {"turns": line} if isinstance(line, list) else dict(line)
            line.setdefault("seed", seed + i)
            parsed.append(parse_conversation(line, i, set(self.model.codecs)))
        with torch.inference_mode():
            return answer(self.model, parsed)
