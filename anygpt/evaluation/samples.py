"""A protocol's pinned samples: read, checked, and turned into request inputs (files on disk)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from anygpt import AnyGPTError


@dataclass
class Sample:
    """One pinned sample: its id, reference text, and the input file (None where it could not be made); a chat
    sample's conversation as a chat input line (``anygpt.data.chat``)."""

    index: int
    id: str
    reference: str
    source: dict
    input_path: Path | None = None
    problem: str | None = None
    conversation: dict | None = None


def read_samples(path: str | Path, limit: int | None = None, data_root: str | None = None,
                 download_hint: str | None = None, expected_count: int | None = None,
                 modality: str = "speech") -> list[Sample]:
    """The samples of a pinned list (JSONL), in order, or of a data set a reader knows (``READERS``: ``path``
    ``librispeech`` or ``vctk``); a line that is not a sample is an error naming it. Lines of the demo world's
    held-out list count where their ``modality`` is the task's input (``speech``) or output (``image``); lines of
    its held-out conversations (modality ``chat``) have their ``answer`` as the reference."""
    if str(path) in READERS:
        found = READERS[str(path)](data_root, download_hint)
        if expected_count is not None and len(found) != expected_count:
            raise AnyGPTError(f"data_root: {data_root} gives {len(found)} samples, the protocol pins "
                              f"{expected_count}")
        return found[:limit]
    path = Path(path)
    if not path.is_file():
        raise AnyGPTError(f"samples: no sample list at {path}")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnyGPTError(f"{path}:{number}: not JSON ({err.msg})") from None
        if modality == "chat" and isinstance(record, dict) and "modality" not in record:
            if not isinstance(record.get("must_name"), list) or not isinstance(record.get("attachment"), dict):
                raise AnyGPTError(f"{path}:{number}: a conversation needs its attachment and must_name "
                                  f"(anygpt/demo/heldout_chat.jsonl)")
            record = {**record, "text": str(record.get("answer", ""))}
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise AnyGPTError(f"{path}:{number}: a sample needs a text (its reference)")
        if record.get("modality", modality) != modality:
            continue  # other modalities of a mixed list (the demo's held-out list)
        ident = str(record.get("id", f"{path.stem}-{len(samples):05d}"))
        samples.append(Sample(len(samples), ident, record["text"], record))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise AnyGPTError(f"samples: {path} holds no sample of this task")
    return samples


def _cut(source: Path, target: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``source`` written to ``target`` (at its own rate)."""
    import soundfile

    if not target.is_file():
        info = soundfile.info(str(source))
        audio, rate = soundfile.read(str(source), frames=int(round(seconds * info.samplerate)), dtype="float32")
        target.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(target), audio, rate)
    return target


def prepare_audio(sample: Sample, data_root: str | None, folder: Path, download_hint: str | None,
                  key: str = "audio", following: dict | None = None, prompt_seconds: float | None = None) -> None:
    """Point ``sample.input_path`` at its audio (``key``: ``audio``, or ``prompt`` for a voice prompt): a file under
    ``data_root`` (a prompt cut to its first ``prompt_seconds``), or the demo line rendered by espeak-ng into
    ``folder`` (a prompt: ``following``'s sentence in this line's voice). A missing data set is an error (it names
    what to download); a missing file or an empty reference marks the sample (``problem``), which the runner skips
    and counts."""
    record = sample.source
    if key in record:
        path = _data_file(sample, key, data_root, download_hint)
        if path is None:
            return
        if not sample.reference.strip():
            sample.problem = "empty reference"
        elif key == "prompt" and prompt_seconds:
            sample.input_path = _cut(path, folder / f"{sample.index:05d}_prompt.wav", prompt_seconds)
        else:
            sample.input_path = path
        return
    import soundfile

    from anygpt.demo.heldout import speak

    spoken = record if key == "audio" else {**record, "text": (following or record)["text"]}
    path = folder / f"{sample.index:05d}{'' if key == 'audio' else '_prompt'}.wav"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, speak(spoken)[0], 16000)
    sample.input_path = path


def _missing(what: str, data_root: str | None, download_hint: str | None) -> AnyGPTError:
    hint = f" (download: {download_hint})" if download_hint else ""
    return AnyGPTError(f"data_root: no {what} at {data_root}{hint}")


def _data_file(sample: Sample, key: str, data_root: str | None, download_hint: str | None) -> Path | None:
    """The data set's file that ``sample.source[key]`` names; None (the sample marked) where it is missing; a
    missing data set is an error naming what to download."""
    if data_root is None or not Path(data_root).is_dir():
        raise _missing("data set", data_root, download_hint)
    path = Path(data_root) / sample.source[key]
    if path.is_file():
        return path
    sample.problem = f"missing file {path}"
    return None


def librispeech(data_root: str | None, download_hint: str | None) -> list[Sample]:
    """Every utterance of a LibriSpeech split folder (``<speaker>/<chapter>/<id>.flac`` beside
    ``<speaker>-<chapter>.trans.txt``), in id order, with its transcript as the reference."""
    root = Path(data_root) if data_root else None
    transcripts = sorted(root.glob("*/*/*.trans.txt")) if root is not None and root.is_dir() else []
    if not transcripts:
        raise _missing("LibriSpeech split", data_root, download_hint)
    entries = []
    for listing in transcripts:
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ident, _, text = line.strip().partition(" ")
                audio = listing.parent.relative_to(root) / f"{ident}.flac"
                entries.append((ident, text, str(audio)))
    entries.sort()
    return [Sample(i, ident, text, {"id": ident, "text": text, "audio": audio})
            for i, (ident, text, audio) in enumerate(entries)]


def vctk(data_root: str | None, download_hint: str | None) -> list[Sample]:
    """One zero-shot TTS sample per VCTK speaker (0.92: ``txt/<speaker>/<id>.txt`` and
    ``wav48_silence_trimmed/<speaker>/<id>_mic1.flac``), speakers in order: the prompt is the speaker's first
    utterance with both files, the sentence to speak (the reference) the text of its second (Appendix C: a prompt
    "along with a separate text"). Speakers with fewer than two such utterances are left out."""
    root = Path(data_root) if data_root else None
    if root is None or not (root / "txt").is_dir():
        raise _missing("VCTK corpus", data_root, download_hint)
    samples = []
    for speaker in sorted(p for p in (root / "txt").iterdir() if p.is_dir()):
        usable = [t for t in sorted(speaker.glob("*.txt"))
                  if (root / "wav48_silence_trimmed" / speaker.name / f"{t.stem}_mic1.flac").is_file()]
        if len(usable) < 2:
            continue
        prompt = Path("wav48_silence_trimmed") / speaker.name / f"{usable[0].stem}_mic1.flac"
        text = " ".join(usable[1].read_text(encoding="utf-8").split())
        samples.append(Sample(len(samples), speaker.name, text,
                              {"id": speaker.name, "text": text, "prompt": str(prompt), "target": usable[1].stem}))
    return samples


COCO_T2I_DRAW = 30000


def coco_t2i(data_root: str | None, download_hint: str | None) -> list[Sample]:
    """The paper's text -> image set: ``COCO_T2I_DRAW`` images of MS-COCO val2014 drawn by ``random.Random(0)``
    from the image ids in order (all of them where there are fewer), each with its first caption (lowest
    annotation id) and its photo as the reference (``annotations/captions_val2014.json``, ``val2014/``)."""
    import random

    root = Path(data_root) if data_root else None
    annotations = root / "annotations" / "captions_val2014.json" if root is not None else None
    if annotations is None or not annotations.is_file():
        raise _missing("MS-COCO val2014 (annotations/captions_val2014.json)", data_root, download_hint)
    data = json.loads(annotations.read_text(encoding="utf-8"))
    files = {image["id"]: image["file_name"] for image in data["images"]}
    first: dict[int, tuple[int, str]] = {}
    for note in data["annotations"]:
        if note["image_id"] not in first or note["id"] < first[note["image_id"]][0]:
            first[note["image_id"]] = (note["id"], " ".join(note["caption"].split()))
    ids = sorted(i for i in files if i in first)
    drawn = random.Random(0).sample(ids, min(COCO_T2I_DRAW, len(ids)))
    return [Sample(k, str(i), first[i][1], {"id": str(i), "text": first[i][1], "image": f"val2014/{files[i]}"})
            for k, i in enumerate(drawn)]


def coco_karpathy(data_root: str | None, download_hint: str | None) -> list[Sample]:
    """The 5000 images of Karpathy's COCO test split (``dataset_coco.json`` in ``data_root``, pictures under their
    ``filepath``), in the file's order, each with all of its captions (``references``; ``text``: the first)."""
    listing = Path(data_root) / "dataset_coco.json" if data_root else None
    if listing is None or not listing.is_file():
        raise _missing("Karpathy split (dataset_coco.json)", data_root, download_hint)
    samples = []
    for image in json.loads(listing.read_text(encoding="utf-8"))["images"]:
        if image.get("split") != "test":
            continue
        captions = [" ".join(s["raw"].split()) for s in image["sentences"]]
        ident = str(image.get("cocoid", image["filename"]))
        samples.append(Sample(len(samples), ident, captions[0], {
            "id": ident, "text": captions[0], "references": captions,
            "image": f"{image['filepath']}/{image['filename']}"}))
    return samples


def musiccaps(data_root: str | None, download_hint: str | None) -> list[Sample]:
    """MusicCaps' evaluation clips (``musiccaps-public.csv`` rows with ``is_audioset_eval`` true, in the file's
    order) whose audio the user fetched as ``audio/<ytid>.wav`` (the 10-s clip, or a longer file starting at
    ``start_s``: the codec reads the protocol's window), each with its caption; a clip without audio is skipped and
    counted."""
    import csv

    listing = Path(data_root) / "musiccaps-public.csv" if data_root else None
    if listing is None or not listing.is_file():
        raise _missing("MusicCaps (musiccaps-public.csv and audio/<ytid>.wav)", data_root, download_hint)
    samples = []
    with listing.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("is_audioset_eval", "").strip().lower() != "true":
                continue
            caption = " ".join(row["caption"].split())
            samples.append(Sample(len(samples), row["ytid"], caption, {
                "id": row["ytid"], "text": caption, "music": f"audio/{row['ytid']}.wav", "references": [caption]}))
    return samples


READERS = {"librispeech": librispeech, "vctk": vctk, "coco_t2i": coco_t2i, "coco_karpathy": coco_karpathy,
           "musiccaps": musiccaps}


def prepare_reference(sample: Sample, data_root: str | None, download_hint: str | None,
                      folder: Path | None = None, key: str = "image") -> None:
    """Point ``sample.input_path`` at its picture or music (``key``, under ``data_root``), or at the demo line's
    scene or melody made into ``folder`` (where one is given); a sample without either has none."""
    if key not in sample.source:
        if folder is not None and sample.source.get("modality") == "music":
            import soundfile

            from anygpt.demo.heldout import play

            path = folder / f"{sample.index:05d}.wav"
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, play(sample.source), 16000)
            sample.input_path = path
        if folder is not None and sample.source.get("modality") == "image":
            from anygpt.demo.heldout import picture

            path = folder / f"{sample.index:05d}.png"
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                picture(sample.source).save(path)
            sample.input_path = path
        return
    sample.input_path = _data_file(sample, key, data_root, download_hint)
