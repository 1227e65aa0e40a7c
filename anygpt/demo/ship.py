"""Turn the demo world's training runs into the weights the package ships (``anygpt/demo/weights``).

    python -m anygpt.demo.ship runs/demo anygpt/demo/weights

Takes each run's ``best.ckpt`` (lowest validation loss) where there is one, else its ``last.ckpt``. Writes
``speech_codec.safetensors`` (the codec's SpeechTokenizer, ``SpeechTokenizerCodec(checkpoint=...)``; the
``speech_decoder`` run, the same codec with its decoder fine-tuned, writes the same file after ``speech_codec``),
``soundstorm.safetensors`` (``SoundStormDecoder.from_pretrained``; its constructor arguments in the file's metadata),
``music_codec/`` (a transformers Encodec folder), ``image_codec/`` (the SEED codec's files and its unCLIP pipeline
``decoder/``; the ``image_decoder`` run, the same codes with the decoder trained on, writes it again after
``image_codec``) and ``lm/`` (``anygpt export``: config, int8 weights and tokenizer), the rest in half precision,
and the shipped held-out clips under ``anygpt/demo/clips``. Each part is skipped when its run is missing; what was
written is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from anygpt import AnyGPTError

CLIPS = Path(__file__).with_name("clips")


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _fit_state(ckpt: Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise AnyGPTError(f"{ckpt} holds no '{prefix}' weights")
    return state, checkpoint


def ship_speech_codec(ckpt: Path, out: Path) -> Path:
    """The SpeechTokenizer weights of a ``SpeechTokenizerTrainer`` fit checkpoint, half precision, without the
    codebooks' training statistics (``anygpt.tokenizers.codebook_state``)."""
    from safetensors.torch import save_file

    from anygpt.tokenizers.codebook_state import drop_codebook_stats

    state, _ = _fit_state(ckpt, "codec.model.")
    path = out / "speech_codec.safetensors"
    save_file(_half(drop_codebook_stats(state)), path)
    return path


def ship_soundstorm(ckpt: Path, out: Path) -> Path:
    """The decoder of a ``SoundStormTrainer`` fit checkpoint, half precision, with its config as metadata."""
    from safetensors.torch import save_file

    from anygpt.training.soundstorm import CONFIG_KEY

    state, checkpoint = _fit_state(ckpt, "decoder.")
    path = out / "soundstorm.safetensors"
    save_file(_half(state), path, metadata={CONFIG_KEY: json.dumps(checkpoint.get(CONFIG_KEY, {}))})
    return path


def ship_music_codec(ckpt: Path, out: Path) -> Path:
    """The Encodec (with its harmonic branch) of an ``EncodecTrainer`` fit checkpoint as a transformers folder,
    half precision and without the codebooks' training statistics, into ``out/music_codec``
    (``EncodecMusicCodec(source=...)``)."""
    from anygpt.tokenizers.music import EncodecMusicCodec

    folder = out / "music_codec"
    if folder.exists():
        shutil.rmtree(folder)
    from safetensors.torch import load_file, save_file

    from anygpt.tokenizers.codebook_state import drop_codebook_stats

    EncodecMusicCodec(source=str(ckpt), segment_seconds=None).model.half().save_pretrained(folder)
    for file in folder.glob("*.safetensors"):
        save_file(drop_codebook_stats(load_file(str(file))), str(file), metadata={"format": "pt"})
    return folder


def ship_image_codec(ckpt: Path, out: Path) -> Path:
    """A joint ``SeedTrainer`` fit checkpoint (or the ``export`` folder such a fit wrote), half precision, into
    ``out/image_codec``: the codec's ``seed_quantizer.pt`` (less its training-only query-reconstruction head,
    ``RECON_HEAD``: 0.23 MB of the demo's), ``eva_vit_g.pth`` and ``seed_config.json`` and its unCLIP decoder as a
    diffusers pipeline folder ``decoder/`` whose VAE keeps its decoder only (``anygpt.decoders.decoder_only_vae``)."""
    from safetensors.torch import load_file, save_file

    from anygpt.decoders.decoder_only_vae import strip_encoder

    folder = out / "image_codec"
    if folder.exists():
        shutil.rmtree(folder)
    if ckpt.is_dir():
        if not (ckpt / "decoder" / "model_index.json").is_file():
            raise AnyGPTError(f"{ckpt}: a SeedTrainer export without its unCLIP decoder/ (joint training): nothing "
                              f"draws")
        shutil.copytree(ckpt, folder)
        for weights in (folder / "decoder").glob("*/*.safetensors"):
            save_file(_half(load_file(weights)), weights)
    else:
        from anygpt.training.image_codec import SeedTrainer

        trained = SeedTrainer.load_from_checkpoint(ckpt, map_location="cpu", embedder=None)
        if trained.unclip is None:
            raise AnyGPTError(f"{ckpt}: a SeedTrainer run without its unCLIP decoder (joint training): nothing draws")
        trained.unclip.decoder.pipe.to(torch.float16)
        trained.export(str(folder))  # the codec's files and decoder/
    from anygpt.tokenizers.seed.model import RECON_HEAD

    for name in ("seed_quantizer.pt", "eva_vit_g.pth"):
        state = torch.load(folder / name, map_location="cpu")
        if name == "seed_quantizer.pt":  # without the query-reconstruction head, which only training uses
            state = {k: v for k, v in state.items() if not RECON_HEAD.match(k)}
        torch.save(_half(state), folder / name)
    strip_encoder(folder / "decoder" / "vae")  # decoding never encodes pictures
    return folder


def ship_lm(ckpt: Path, out: Path) -> Path:
    """``anygpt export`` of the LM checkpoint with int8 weights (``anygpt.lm.int8_weights``, a float16 scale per
    row: half the bytes of float16, so the 30 MB budget holds an LM of twice the parameters; so rounded, the part-2
    LM's held-out ASR WER stayed 7.2 %), into ``out/lm``. ``tokenizer_config.json`` loses its
    ``added_tokens_decoder``, a third copy of the added tokens (0.35 MB with the demo's 2300 media tokens):
    ``added_tokens.json`` gives them to the model's tokenizer, ``tokenizer.json`` to transformers'; both are
    written without indentation."""
    from anygpt.lm.export import export

    folder = out / "lm"
    if folder.exists():
        shutil.rmtree(folder)
    path = Path(export(ckpt, folder, dtype="int8"))
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    for name in ("tokenizer.json", "added_tokens.json"):  # the same JSON without indentation (0.2 MB less)
        data = json.loads((path / name).read_text(encoding="utf-8"))
        (path / name).write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return path


FROM_EXPORT = ("image_codec", "image_decoder")
PARTS = {"speech_codec": ship_speech_codec, "speech_decoder": ship_speech_codec, "soundstorm": ship_soundstorm,
         "music_codec": ship_music_codec, "image_codec": ship_image_codec, "image_decoder": ship_image_codec,
         "lm": ship_lm}


def write_clips(count: int = 4, folder: Path = CLIPS, media: int = 2) -> list[Path]:
    """The first ``count`` held-out sentences, spoken by their held-out voices, as 16 kHz wavs, and the first
    ``media`` held-out scenes (PNG) and melodies (16 kHz FLAC): test inputs and the README's examples, rebuilt
    exactly from ``heldout.jsonl`` (the speech by espeak-ng)."""
    import soundfile

    from anygpt.demo.heldout import picture, play, read, speak
    from anygpt.demo.speech_corpus import SAMPLE_RATE

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, line in enumerate(read(modality="speech")[:count]):
        paths.append(folder / f"heldout_{i}.wav")
        soundfile.write(paths[-1], speak(line)[0], SAMPLE_RATE, subtype="PCM_16")
    for i, line in enumerate(read(modality="image")[:media]):
        paths.append(folder / f"heldout_scene_{i}.png")
        picture(line).save(paths[-1])
    for i, line in enumerate(read(modality="music")[:media]):
        paths.append(folder / f"heldout_melody_{i}.flac")
        soundfile.write(paths[-1], play(line), SAMPLE_RATE, subtype="PCM_16")
    return paths


def run_checkpoint(runs: Path, name: str) -> Path:
    """A run's ``best.ckpt`` (lowest validation loss, where its config keeps one), else its ``last.ckpt``; an image
    codec run kept without its checkpoints ships from its ``export`` folder."""
    best, last, export = runs / name / "best.ckpt", runs / name / "last.ckpt", runs / name / "export"
    if not best.is_file() and not last.is_file() and name in FROM_EXPORT and export.is_dir():
        return export
    return best if best.is_file() else last


def _training(ckpt: Path) -> str:
    if ckpt.is_dir():  # an export folder: its run's metrics say how far it trained
        metrics = ckpt.parent.parent / f"{ckpt.parent.name}_logs" / "version_0" / "metrics.csv"
        rows = list(csv.DictReader(metrics.read_text(encoding="utf-8").splitlines())) if metrics.is_file() else []
        steps = rows[-1]["step"] if rows else "?"
        return f"{steps} steps (shipped from its export folder; the checkpoint was not kept)"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    seconds = checkpoint.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train", 0.0)
    return f"{checkpoint['global_step']} steps, {seconds / 60:.1f} min of training"


PROVENANCE = "parts.json"


def _commit() -> str:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def shipped_parts(out: Path) -> dict[str, dict]:
    """What ``out/parts.json`` says of each shipped part (``record_part``); {} if there is none."""
    path = out / PROVENANCE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def record_part(out: Path, name: str, ckpt: Path) -> None:
    """Note in ``out/parts.json`` how the shipped part ``name`` was trained (steps, minutes, commit), so that the
    model card of a later session, whose runs are gone, still says it."""
    parts = {**shipped_parts(out), name: {"training": _training(ckpt), "commit": _commit()}}
    (out / PROVENANCE).write_text(json.dumps(parts, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def kept_notes(card: Path) -> list[str]:
    """The notes of an existing model card (its ``## Notes`` items), which a new card keeps."""
    if not card.is_file():
        return []
    notes, inside = [], False
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line == "## Notes"
        elif inside and line.startswith("- "):
            notes.append(line[2:])
    return notes


def _corpus_lines(corpus: Path, scenes: Path, melodies: Path) -> list[str]:
    lines = []
    if corpus.is_file():
        summary = json.loads(corpus.read_text())
        lines += [f"Speech, seed {summary['seed']}, {summary['sample_rate']} Hz:", ""]
        lines += [f"- {split}: {s['utterances']} utterances, {s['hours']} h, {s['voices']} voices, manifest sha256 "
                  f"`{s['sha256'][:16]}`, audio sha256 `{s['audio_sha256'][:16]}`"
                  for split, s in summary["splits"].items()] + [""]
    if scenes.is_file():
        summary = json.loads(scenes.read_text())
        lines += [f"Scenes, seed {summary['seed']}, {summary['size']} px:", ""]
        lines += [f"- {split}: {s['scenes']} scenes, manifest sha256 `{s['manifest_sha256']}`, pixels sha256 "
                  f"`{s['pixels_sha256']}`" for split, s in summary["splits"].items()] + [""]
    if melodies.is_file():
        summary = json.loads(melodies.read_text())
        lines += [f"Melodies, seed {summary['seed']}, {summary['sample_rate']} Hz:", ""]
        lines += [f"- {split}: {s['clips']} melodies, {s['hours']} h, manifest sha256 `{s['manifest_sha256']}`, "
                  f"audio sha256 `{s['audio_sha256']}`" for split, s in summary["splits"].items()] + [""]
    return ["## Corpus", "", *lines] if lines else []


def write_card(runs: Path, out: Path, corpus: Path = Path("data/demo/speech/corpus.json"),
               figures: Path = Path("benchmarks/results/demo_speech.json"), notes: Sequence[str] = (),
               scenes: Path = Path("data/demo/images/corpus.json"),
               melodies: Path = Path("data/demo/music/corpus.json"),
               media_figures: Path = Path("benchmarks/results/demo_media.json")) -> Path:
    """``MODEL_CARD.md`` beside the weights: the corpora, how each part was trained (its run, else what
    ``parts.json`` recorded when it shipped), the commit, the held-out figures of both benchmarks, the notes of the
    card it replaces and free-text ``notes`` (how a run departed from the documented stages, say)."""
    shipped = shipped_parts(out)
    lines = ["# anygpt demo world", "",
             "A small AnyGPT trained by this project from nothing on its own worlds of espeak-ng speech, drawn scenes "
             "and synthesized melodies (`anygpt.demo`). Runs offline on the CPU: "
             "`anygpt predict --config configs/demo.yaml`.", "",
             f"Written at commit `{_commit()}` by `python -m anygpt.demo.ship`; each part says when it shipped.", "",
             "## Parts", ""]
    for name in PARTS:
        config = f"configs/demo/{name}.yaml"
        ckpt = run_checkpoint(runs, name)
        if ckpt.exists():
            how = _training(ckpt)
        elif name in shipped:
            how = f"{shipped[name]['training']} (shipped at commit {shipped[name]['commit']})"
        else:
            how = "not trained"
        lines.append(f"- `{name}` ({config}): {how}")
    lines += ["", "Rebuild: `bash configs/demo/stage.sh STAGE`, the stages its header lists (part 1: speech_codec, "
              "speech_codec_refine, speech_decoder, soundstorm, tokenize, lm; part 2: part2_image, part2_data, "
              "part2_lm), each shipping with `python -m anygpt.demo.ship`; see README, Demo world.", ""]
    notes = [*kept_notes(out / "MODEL_CARD.md"), *notes]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in dict.fromkeys(notes)], ""]
    lines += _corpus_lines(corpus, scenes, melodies)
    for path, command, keys in ((figures, "benchmarks/demo_speech.py", ("count", "asr", "tts", "zero_shot", "codec")),
                                (media_figures, "benchmarks/demo_media.py", ("image", "music", "chat"))):
        if path.is_file():
            result = json.loads(path.read_text())
            lines += [f"## Held-out figures (`python {command}`)", "", "```",
                      json.dumps({k: result[k] for k in keys if k in result}, indent=1), "```", ""]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo weights that the package ships.")
    parser.add_argument("runs", nargs="?", default="runs/demo")
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("weights")))
    parser.add_argument("--clips", type=int, default=4, help="held-out clips to write (0: none)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="what to ship, in this order (default: all)")
    parser.add_argument("--note", action="append", default=[], help="a line for the model card's notes (repeatable)")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, ship in ((name, PARTS[name]) for name in PARTS if name in args.parts):
        ckpt = run_checkpoint(runs, name)
        if ckpt.exists():
            print(f"{name}: {ship(ckpt, out)}")
            record_part(out, name, ckpt)
        else:
            print(f"{name}: skipped, no {ckpt}")
    if args.clips:
        print("clips:", *write_clips(args.clips))
    print("card:", write_card(runs, out, notes=args.note))


if __name__ == "__main__":
    main()
