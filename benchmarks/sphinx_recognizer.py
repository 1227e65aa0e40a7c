"""An independent speech recogniser for the demo world: CMU PocketSphinx (its pip wheel ships the en-us acoustic model
and dictionary) restricted to the demo grammar through a JSGF grammar built from ``anygpt.demo.grammar``.

It shares nothing with the demo model (no codec, no LM), so it checks that the demo's synthesized speech is
intelligible as speech, not only to the demo's own recogniser. ``pip install pocketsphinx``.
"""

from __future__ import annotations

import re
import tempfile

import numpy as np

from anygpt.demo import grammar

SLOTS = {"colour": grammar.COLOURS, "number": grammar.NUMBERS, "size": grammar.SIZES, "place": grammar.PLACES,
         "prep": grammar.PREPOSITIONS, "action": grammar.ACTIONS, "person": grammar.PEOPLE, "time": grammar.TIMES,
         "mood": grammar.MOODS, "object": sorted(grammar.OBJECTS), "objects": sorted(set(grammar.OBJECTS.values()))}


def jsgf() -> str:
    """The demo grammar as a JSGF grammar (one public rule: any template)."""
    lines = ["#JSGF V1.0;", "grammar demo;"]
    rules = []
    for i, template in enumerate(grammar.TEMPLATES):
        rules.append(f"<t{i}>")
        body = re.sub(r"{(\w+)}", r"<\1>", template)
        lines.append(f"<t{i}> = {body};")
    lines.append(f"public <sentence> = {' | '.join(rules)};")
    for name, words in SLOTS.items():
        lines.append(f"<{name}> = {' | '.join(sorted(set(words)))};")
    return "\n".join(lines) + "\n"


class SphinxRecognizer:
    """PocketSphinx en-us with the demo grammar; ``transcribe(audio_16khz_float)`` gives the recognised words."""

    def __init__(self):
        from pocketsphinx import Config, Decoder

        self._file = tempfile.NamedTemporaryFile("w", suffix=".gram", delete=False)
        self._file.write(jsgf())
        self._file.close()
        config = Config(jsgf=self._file.name, loglevel="FATAL", samprate=16000)
        config["lm"] = None
        self.decoder = Decoder(config)

    def transcribe(self, audio: np.ndarray) -> str:
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        pcm = (np.clip(audio * (0.7 / peak if peak > 0 else 1.0), -1, 1) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp else ""
