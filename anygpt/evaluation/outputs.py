"""What a protocol makes of a batch's answers: per sample, the hypothesis text and the extra scores and files.

asr and m2t read the reply's text; tts writes the speech and transcribes it (``listeners.Recogniser``) and scores
its voice against the prompt; t2i writes the picture and scores it with CLIP; t2m writes the music and scores it
with CLAP (m2t scores the input music against the written and the real caption); chat writes a spoken reply and
transcribes it. On the demo world's held-out items the world's analysers judge too (``anygpt.demo.verdicts``:
``judged`` pictures and melodies, ``tempo`` and ``key``; ``named``: a caption or reply names what its item asks
for; ``spoken_as_asked``). Each returns, per sample, ``(hypothesis, extra)`` where ``extra`` holds per-sample
scores and ``output`` (a written file).
"""

from __future__ import annotations

from pathlib import Path

from anygpt.evaluation.protocol import EvalProtocol
from anygpt.evaluation.samples import Sample


class Outputs:
    """The scorer models a protocol needs, loaded once, and its per-task handling of answers.

    Args:
        protocol: The protocol (its task, metrics and scorer models).
        model: The model under evaluation (the ``self`` recogniser of tts uses it).
    """

    def __init__(self, protocol: EvalProtocol, model):
        from anygpt.evaluation import listeners

        self.protocol, metrics = protocol, set(protocol.metrics)
        self.listen = self.clip = self.clap = None
        if protocol.task == "tts":
            speaker = listeners.SpeakerEncoder(protocol.speaker_model) if "sim" in metrics else None
            self.listen = (listeners.Recogniser(protocol.recogniser, model), speaker)
        if protocol.task == "chat":
            self.listen = (listeners.Recogniser(protocol.recogniser, model), None)
        if protocol.task == "t2i" and {"clip_t", "clip_i"} & metrics:
            self.clip = listeners.ClipScorer(protocol.clip_model)
        if protocol.task in ("t2m", "m2t") and {"clap", "clap_reference"} & metrics:
            self.clap = listeners.ClapScorer(protocol.clap_model)

    def __call__(self, out: Path, batch: list[Sample], answers: list[dict]) -> list[tuple[str, dict]]:
        task = self.protocol.task
        if task == "t2i":
            return _pictures(self.protocol, out, batch, answers, self.clip)
        if task in ("t2m", "m2t"):
            results = _music(self.protocol, out, batch, answers, self.clap)
        elif task == "chat":
            return _replies(self.protocol, out, batch, answers, self.listen[0])
        else:
            results = _speech(self.protocol, out, batch, answers, self.listen)
        if "named" in self.protocol.metrics:  # caption, m2t: the demo world's words
            from anygpt.demo.verdicts import caption_words, names_all

            for sample, answer, (hypothesis, extra) in zip(batch, answers, results):
                if answer.get("status") == "ok":
                    extra["named"] = float(names_all(hypothesis, caption_words(sample.source)))
        return results


def _speech(protocol: EvalProtocol, out: Path, batch: list[Sample], answers: list[dict], listen) -> list:
    """Per sample: the hypothesis text and, for tts, the output file and its speaker similarity to the prompt."""
    ok = [a.get("status") == "ok" for a in answers]
    if listen is None:
        return [((a.get("text") or "") if good else "", {}) for a, good in zip(answers, ok)]
    import soundfile

    recogniser, speaker = listen
    folder = out / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sample, answer, good in zip(batch, answers, ok):
        path = folder / f"{sample.index:05d}.wav"
        if good:
            soundfile.write(path, answer["media"].reshape(-1).float().numpy(), answer.get("sample_rate", 16000))
        files.append(path if good else None)
    spoken = [f for f in files if f is not None]
    heard = dict(zip(spoken, recogniser(spoken, protocol.seed))) if spoken else {}
    results = []
    for sample, path in zip(batch, files):
        if path is None:
            results.append(("", {}))
            continue
        extra = {"output": str(path)}
        if speaker is not None:
            extra["sim"] = speaker.similarity(path, sample.input_path)
        results.append((heard[path], extra))
    return results


def _pictures(protocol: EvalProtocol, out: Path, batch: list[Sample], answers: list[dict], clip) -> list:
    """Per sample of t2i: no text, the picture written to ``outputs/``, its CLIP-T and (with a photo) CLIP-I."""
    from PIL import Image

    folder = out / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for sample, answer in zip(batch, answers):
        if answer.get("status") != "ok":
            results.append(("", {}))
            continue
        path = folder / f"{sample.index:05d}.png"
        answer["media"].save(path)
        written = Image.open(path).convert("RGB")  # what is scored is the file, as written
        extra = {"output": str(path)}
        if "judged" in protocol.metrics:
            from anygpt.demo.verdicts import scene_right

            extra["judged"] = float(scene_right(written, sample.source["attributes"]))
        if clip is None:
            results.append(("", extra))
            continue
        drawn = clip.image(written)
        if "clip_t" in protocol.metrics:
            extra["clip_t"] = float(drawn @ clip.text(sample.reference))
        if "clip_i" in protocol.metrics and sample.input_path is not None:
            extra["clip_i"] = float(drawn @ clip.image(Image.open(sample.input_path)))
        results.append(("", extra))
    return results


def _music(protocol: EvalProtocol, out: Path, batch: list[Sample], answers: list[dict], clap) -> list:
    """Per sample of t2m (the music written to ``outputs/``, its CLAP to the caption) or m2t (the caption, CLAP of
    the input music to it and to the reference caption)."""
    import soundfile

    results = []
    for sample, answer in zip(batch, answers):
        if answer.get("status") != "ok":
            results.append(("", {}))
        elif protocol.task == "t2m":
            folder = out / "outputs"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{sample.index:05d}.wav"
            wave, rate = answer["media"].reshape(-1).float().numpy(), answer.get("sample_rate", 32000)
            soundfile.write(path, wave, rate)
            extra = {"output": str(path)}
            if {"judged", "tempo", "key"} & set(protocol.metrics):
                from anygpt.demo.verdicts import melody_right

                verdict = melody_right(wave, sample.source["attributes"], rate)
                extra |= {name: float(verdict["both" if name == "judged" else name])
                          for name in ("judged", "tempo", "key") if name in protocol.metrics}
            if clap is not None:
                extra["clap"] = float(clap.audio(path) @ clap.text(sample.reference))
            results.append(("", extra))
        else:
            caption, extra = answer.get("text") or "", {}
            if clap is not None:
                music = clap.audio(sample.input_path)
                extra = {"clap": float(music @ clap.text(caption)),
                         "clap_reference": float(music @ clap.text(sample.reference))}
            results.append((caption, extra))
    return results


def _replies(protocol: EvalProtocol, out: Path, batch: list[Sample], answers: list[dict], recogniser) -> list:
    """Per conversation of chat: its reply's text with the transcript of any speech in it (written to
    ``outputs/``), whether it names every word of the record's ``must_name`` and whether it spoke as asked."""
    import soundfile

    from anygpt.demo.verdicts import names_all

    folder = out / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    replies, spoken = [], {}
    for sample, answer in zip(batch, answers):
        reply = answer["replies"][-1] if answer.get("status") == "ok" and answer.get("replies") else None
        replies.append(reply)
        speech = [m for m in (reply or {}).get("media", []) if m["modality"] == "speech"]
        if speech:
            path = folder / f"{sample.index:05d}.wav"
            soundfile.write(path, speech[0]["media"].reshape(-1).float().numpy(), speech[0].get("sample_rate", 16000))
            spoken[sample.index] = path
    heard = dict(zip(spoken.values(), recogniser(list(spoken.values()), protocol.seed))) if spoken else {}
    results = []
    for sample, reply in zip(batch, replies):
        if reply is None:
            results.append(("", {}))
            continue
        path = spoken.get(sample.index)
        hypothesis = " ".join(part for part in (reply.get("text") or "", heard.get(path, "")) if part)
        extra = {"named": float(names_all(hypothesis, sample.source["must_name"])),
                 "spoken_as_asked": float((path is not None) == bool(sample.source.get("speak")))}
        results.append((hypothesis, extra | ({"output": str(path)} if path else {})))
    return results
