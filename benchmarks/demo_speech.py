"""The demo world's speech goals on its held-out split (sentences and voices that training never saw).

ASR: WER of the demo on held-out sentences spoken (espeak-ng, from ``anygpt/demo/heldout.jsonl``) by held-out voices.
TTS: WER of the demo's ASR on its own speech for held-out sentences (random voices), and, where ``pocketsphinx`` is
installed, of an independent recogniser (PocketSphinx en-us on the demo grammar, ``sphinx_recognizer.py``) on the
same speech and on the espeak-ng originals. Zero-shot TTS: a held-out clip of voice A prompts the synthesis of another
sentence; a pretrained speaker encoder (``resemblyzer``) compares the output with espeak-ng's rendering of that
sentence by voice A and by another held-out voice B; a pair counts when A is the closer one (its ceiling, reported
with the codec as "voice kept": the same test on the codec's own reconstruction of A's rendering; and SoundStorm's
part: with A's prompt, from the RVQ-1 codes of A's rendering and of B's, which tells whether the codes or the prompt
carry the voice). Codec: mel distance
(mean |log mel| difference, 80 bands) and SI-SNR (torchmetrics) of 8-level reconstructions, the perplexity of each
RVQ level's code distribution, RVQ-1's phoneme purity (each code labelled by a majority vote on 300 clips of
training voices; the share of held-out-voice frames whose code names their phoneme) and the share of RVQ-1 codes that
survive decoding and re-encoding (what recognising the demo's own speech depends on), the median pitch error of
reconstructions (YIN, semitones, frames voiced in both) and their voicing where the original is unvoiced. Also the
CPU time of the demo config's own example requests.

    python benchmarks/demo_speech.py                           # the shipped weights (configs/demo.yaml)
    python benchmarks/demo_speech.py --count 40 --pairs 20     # quicker
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from timing import write_json


def heldout_clips(folder: Path, lines: list[dict], phonemes: list | None = None) -> list[Path]:
    """espeak-ng renderings of held-out lines (text and voice attributes), as 16 kHz wavs; their phoneme spans are
    appended to ``phonemes`` when given."""
    from anygpt.demo.heldout import speak

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, line in enumerate(lines):
        audio, spans = speak(line)
        paths.append(folder / f"{i:04d}.wav")
        soundfile.write(paths[-1], audio, 16000)
        if phonemes is not None:
            phonemes.append(spans)
    return paths


def code_purity(codec, train: tuple[list[Path], list], test: tuple[list[Path], list]) -> dict:
    """How much of the phoneme RVQ-1 carries: each code votes for the phoneme it most often sits in on clips of
    training voices; the share of held-out-voice frames whose code votes their own phoneme (frame centres)."""
    from collections import Counter, defaultdict

    def frames(paths, spans):
        out = []
        for path, phonemes in zip(paths, spans):
            audio = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None, None]
            with torch.inference_mode():
                codes = codec.model.encode(audio, n_q=1)[0, 0].tolist()
            for t, code in enumerate(codes):
                centre = (t + 0.5) * codec.hop_length / 16000
                label = next((p for p, start, end in phonemes if start <= centre < end), None)
                if label:
                    out.append((code, label))
        return out

    votes = defaultdict(Counter)
    for code, label in frames(*train):
        votes[code][label] += 1
    common = Counter(label for counts in votes.values() for label in counts.elements()).most_common(1)[0][0]
    held = frames(*test)
    majority = {code: counts.most_common(1)[0][0] for code, counts in votes.items()}
    return {"rvq1_phoneme_purity": sum(majority.get(c, common) == l for c, l in held) / len(held),
            "commonest_phoneme_share": sum(l == common for _, l in held) / len(held)}


def wer(hyps: list[str], refs: list[str]) -> float:
    from torchmetrics.functional.text import word_error_rate

    return float(word_error_rate(hyps, refs))


def codec_figures(codec, paths: list[Path]) -> dict:
    import torchaudio
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, hop_length=256, n_mels=80)
    from anygpt.training.pitch import yin_pitch

    distances, snrs, codes_by_level, round_trip, semitones, false_voicing = [], [], [], [], [], []
    model = codec.model.eval()
    for path in paths:
        audio = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None, None]
        with torch.inference_mode():
            codes = model.encode(audio)
            recon = model.decode(codes)[0, 0, : audio.shape[-1]]
        target = audio[0, 0, : recon.shape[-1]]
        distances.append(float((mel(recon).clamp_min(1e-5).log() - mel(target).clamp_min(1e-5).log()).abs().mean()))
        snrs.append(float(scale_invariant_signal_noise_ratio(recon, target)))
        (f0_recon, f0_target), (voiced_recon, voiced_target) = yin_pitch(torch.stack([recon, target]), 16000, 320)
        both = voiced_recon & voiced_target
        semitones.extend((12 * torch.log2(f0_recon[both] / f0_target[both])).abs().tolist())
        false_voicing.append(float(voiced_recon[~voiced_target].float().mean()) if (~voiced_target).any() else 0.0)
        codes_by_level.append(codes[:, 0])
        with torch.inference_mode():  # what recognising decoded speech sees: RVQ-1 of the reconstruction
            again = model.encode(recon[None, None], n_q=1)[0, 0]
        n = min(len(again), codes.shape[-1])
        round_trip.append(float((again[:n] == codes[0, 0, :n]).float().mean()))
    codes = torch.cat(codes_by_level, dim=-1)
    perplexity = []
    for level in codes:
        p = torch.bincount(level, minlength=codec.vocab_size).float()
        p = p[p > 0] / p.sum()
        perplexity.append(float(torch.exp(-(p * p.log()).sum())))
    return {"mel_distance": float(np.mean(distances)), "si_snr_db": float(np.mean(snrs)),
            "perplexity_per_level": perplexity, "codebook_size": codec.vocab_size,
            "rvq1_round_trip_agreement": float(np.mean(round_trip)),
            "pitch_error_semitones": float(np.median(semitones)) if semitones else None,
            "voiced_where_silent_or_unvoiced": float(np.mean(false_voicing))}


class VoicePairs:
    """The voice test, drawn and rendered once for the rows that use it: ``pairs`` draws of two held-out voices A, B
    and a held-out sentence (``jobs``: A, B, the index of A's prompt line, the sentence), espeak-ng's renderings of
    each sentence by A (``renderings``) and by B (``others``), resemblyzer's embeddings of both renderings, and
    the clips of A's prompt lines (``prompts``)."""

    def __init__(self, lines: list[dict], folder: Path, pairs: int, seed: int):
        from resemblyzer import VoiceEncoder, preprocess_wav

        encoder = VoiceEncoder("cpu", verbose=False)
        self.embed = lambda audio: encoder.embed_utterance(preprocess_wav(audio, source_sr=16000))  # noqa: E731
        rng = random.Random(seed)
        by_voice: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            by_voice.setdefault(line["attributes"]["voice"], []).append(i)
        voices = sorted(by_voice)
        self.jobs = []
        for _ in range(pairs):
            a, b = rng.sample(voices, 2)
            self.jobs.append((a, b, by_voice[a][0], lines[rng.randrange(len(lines))]["text"]))
        self.renderings, self.others, self.references = [], [], []
        for k, (a, b, _, text) in enumerate(self.jobs):
            audio = []
            for voice in (a, b):
                line = {"text": text, "attributes": lines[by_voice[voice][0]]["attributes"]}
                path = heldout_clips(folder / f"ref{k}_{voice.replace('+', '_')}", [line])[0]
                audio.append(soundfile.read(path, dtype="float32")[0])
            self.renderings.append(audio[0])
            self.others.append(audio[1])
            self.references.append(tuple(self.embed(x) for x in audio))
        self.prompts = heldout_clips(folder / "prompts", [lines[p] for _, _, p, _ in self.jobs]) if self.jobs else []

    def margin(self, job: int, audio) -> float:
        """How much closer ``audio``'s voice is to job's voice A than to its voice B (cosine)."""
        e = self.embed(audio)
        e_a, e_b = self.references[job]
        return float(e @ e_a) - float(e @ e_b)


def speaker_pairs(demo, voices: VoicePairs, seed: int) -> dict:
    """Zero-shot TTS: is the output closer to its prompt's voice than to another held-out voice?"""
    outputs = demo.synthesize([t for *_, t in voices.jobs], voice_prompts=voices.prompts, seed=seed)
    margins = [voices.margin(k, out[0].numpy()) for k, out in enumerate(outputs)]
    return {"pairs": len(margins), "prompt_voice_closer": float(np.mean([m > 0 for m in margins])) if margins else 0.0,
            "mean_margin": float(np.mean(margins)) if margins else None}


def codec_voice(codec, voices: VoicePairs) -> float:
    """The zero-shot test's ceiling: the share of its pairs where the codec's own 8-level reconstruction of A's
    rendering is closer to A than to B."""
    model, kept = codec.model.eval(), []
    for k, audio in enumerate(voices.renderings):
        with torch.inference_mode():
            recon = model.decode(model.encode(torch.from_numpy(audio)[None, None]))[0, 0, : len(audio)].float()
        kept.append(voices.margin(k, recon.numpy()) > 0)
    return float(np.mean(kept)) if kept else 0.0


def soundstorm_voice(codec, voices: VoicePairs) -> dict:
    """SoundStorm's share of the zero-shot test: with A's prompt, from the RVQ-1 codes of A's own rendering of the
    sentence (codes in the prompt's voice) and from those of B's rendering (codes in another voice), the share of
    pairs whose output is closer to A than to B."""
    kept: dict[str, list[bool]] = {"own_codes": [], "other_codes": []}
    for k, prompt in enumerate(voices.prompts):
        for key, audio in (("own_codes", voices.renderings[k]), ("other_codes", voices.others[k])):
            ids = codec.encode([(torch.from_numpy(audio)[None], 16000)])[0]
            out = codec.decode([ids], prompts=[prompt], seeds=[k])[0]
            kept[key].append(voices.margin(k, out[0].numpy()) > 0)
    return {f"soundstorm_voice_{key}": float(np.mean(v)) if v else None for key, v in kept.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra CLI argument for the config, one per use: --override=--model.backbone=DIR")
    parser.add_argument("--count", type=int, default=100, help="held-out sentences for ASR and TTS")
    parser.add_argument("--pairs", type=int, default=50,
                        help="voice pairs of zero-shot TTS and of the codec's voice test (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=["asr", "tts", "codec"], default=["asr", "tts", "codec"],
                        help="what to measure (zero-shot TTS runs with tts when --pairs > 0)")
    parser.add_argument("--out", default="benchmarks/results/demo_speech.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    from anygpt.demo.heldout import read
    from anygpt.demo.session import DemoSession

    lines = read(modality="speech")
    started = time.perf_counter()
    demo = DemoSession(args.config, args.override)
    load_s = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp(prefix="demo_speech_"))
    spans: list = []
    clips = heldout_clips(folder / "heldout", lines[: args.count], spans)
    refs = [line["text"] for line in lines[: args.count]]
    result = {"benchmark": "demo_speech", "config": args.config, "override": args.override, "count": len(refs),
              "load_s": load_s}

    if "asr" in args.tasks:
        started = time.perf_counter()
        hyps = demo.transcribe(clips, seed=args.seed)
        seconds = (time.perf_counter() - started) / max(len(clips), 1)
        result["asr"] = {"wer": wer(hyps, refs), "seconds_per_clip": seconds,
                         "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]}
    voices = None
    if args.pairs and {"tts", "codec"} & set(args.tasks):
        voices = VoicePairs(lines, folder / "voices", args.pairs, args.seed)
    if "tts" in args.tasks:
        tts(demo, args, refs, clips, folder, voices, result)
    if "codec" in args.tasks:
        codec_part(demo, folder, clips, spans, voices, result)
    write_json(args.out, result)
    report(result)


def tts(demo, args, refs: list[str], clips: list[Path], folder: Path, voices: VoicePairs | None, result: dict) -> None:
    if refs:
        tts_wer(demo, args, refs, clips, folder, result)
    if voices is not None:
        result["zero_shot"] = speaker_pairs(demo, voices, args.seed)


def tts_wer(demo, args, refs: list[str], clips: list[Path], folder: Path, result: dict) -> None:
    started = time.perf_counter()
    speech = demo.synthesize(refs, seed=args.seed)
    tts_s = (time.perf_counter() - started) / len(refs)
    tts_paths = []
    for i, audio in enumerate(speech):
        tts_paths.append(folder / "tts" / f"{i:04d}.wav")
        tts_paths[-1].parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(tts_paths[-1], audio[0].numpy(), 16000)
    heard = demo.transcribe(tts_paths, seed=args.seed)
    result["tts"] = {"wer_demo_asr": wer(heard, refs), "seconds_per_sentence": tts_s,
                     "examples": [{"ref": r, "heard": h} for r, h in list(zip(refs, heard))[:5]]}
    try:
        from sphinx_recognizer import SphinxRecognizer

        sphinx = SphinxRecognizer()
        listen = lambda paths: [sphinx.transcribe(soundfile.read(p, dtype="float32")[0]) for p in paths]  # noqa: E731
        result["tts"]["wer_sphinx"] = wer(listen(tts_paths), refs)
        result["tts"]["wer_sphinx_on_espeak"] = wer(listen(clips), refs)
    except ImportError:
        result["tts"]["wer_sphinx"] = None


def codec_part(demo, folder: Path, clips: list[Path], spans: list, voices: VoicePairs | None, result: dict) -> None:
    codec = demo.model.codecs["speech"]
    result["codec"] = codec_figures(codec, clips)
    if voices is not None:
        result["codec"]["voice_kept"] = codec_voice(codec, voices)
        if getattr(codec, "decoder", None) is not None:
            result["codec"].update(soundstorm_voice(codec, voices))
    from anygpt.demo.speech_corpus import plan

    train_lines = [{"text": r["text"], "attributes": r} for r in plan(0, {"train": 0, "val": 300})["val"]]
    train_spans: list = []
    train_clips = heldout_clips(folder / "training_voices", train_lines, train_spans)
    result["codec"].update(code_purity(codec, (train_clips, train_spans), (clips, spans)))


def report(result: dict) -> None:
    print(f"{'task':<14} {'measure':<44} {'value':>8}")
    if "asr" in result:
        print(f"{'ASR':<14} {'WER, held-out sentences and voices':<44} {100 * result['asr']['wer']:>7.1f}%")
    if "tts" in result:
        print(f"{'TTS':<14} {'WER of the demo ASR on its TTS':<44} {100 * result['tts']['wer_demo_asr']:>7.1f}%")
    if result.get("tts", {}).get("wer_sphinx") is not None:
        print(f"{'TTS':<14} {'WER of PocketSphinx on its TTS (on espeak)':<44} "
              f"{100 * result['tts']['wer_sphinx']:>7.1f}% ({100 * result['tts']['wer_sphinx_on_espeak']:.1f}%)")
    if "zero_shot" in result:
        print(f"{'zero-shot TTS':<14} {'prompt voice closer (resemblyzer)':<44} "
              f"{100 * result['zero_shot']['prompt_voice_closer']:>7.1f}%")
    if "codec" in result:
        c = result["codec"]
        print(f"{'codec':<14} {'mel distance / SI-SNR dB':<44} {c['mel_distance']:>8.3f} / {c['si_snr_db']:.1f}")
        print(f"{'codec':<14} {'RVQ-1 phoneme purity (commonest phoneme)':<44} "
              f"{100 * c['rvq1_phoneme_purity']:>7.1f}% ({100 * c['commonest_phoneme_share']:.1f}%)")
        if c.get("voice_kept") is not None:
            print(f"{'codec':<14} {'voice kept by the codec (zero-shot ceiling)':<44} "
                  f"{100 * c['voice_kept']:>7.1f}%")
        if c.get("soundstorm_voice_own_codes") is not None:
            print(f"{'codec':<14} {'SoundStorm, A prompt: A / B codes closer to A':<44} "
                  f"{100 * c['soundstorm_voice_own_codes']:>7.1f}% / {100 * c['soundstorm_voice_other_codes']:.1f}%")
        print(f"{'codec':<14} {'RVQ-1 codes kept by decode + re-encode':<44} "
              f"{100 * c['rvq1_round_trip_agreement']:>7.1f}%")
        if c.get("pitch_error_semitones") is not None:
            print(f"{'codec':<14} {'pitch error of reconstructions, semitones (YIN)':<44} "
                  f"{c['pitch_error_semitones']:>8.2f}")
            print(f"{'codec':<14} {'voiced where the original is not':<44} "
                  f"{100 * c['voiced_where_silent_or_unvoiced']:>7.1f}%")
        print(f"{'codec':<14} {'perplexity per level':<44} {' '.join(f'{p:.0f}' for p in c['perplexity_per_level'])}")
    if "asr" in result and "tts" in result:
        print(f"{'CPU':<14} {'s per ASR clip / TTS sentence':<44} {result['asr']['seconds_per_clip']:>8.2f} / "
              f"{result['tts']['seconds_per_sentence']:.2f}")


if __name__ == "__main__":
    main()
