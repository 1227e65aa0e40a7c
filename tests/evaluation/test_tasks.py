"""The evaluation tasks beyond ASR: tts (the demo's speech, a WavLM x-vector SIM), t2i (CLIP), caption (CIDEr-D,
BLEU-4), t2m and m2t (CLAP), each scored as the scorer model called directly on the written files would, over
folders shaped as VCTK, COCO and MusicCaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.evaluation.runner import evaluate
from anygpt.evaluation.scorers import basic_normalize
from tests.evaluation.common import ROOT, protocol


def test_demo_tts_speaks_what_it_is_given_and_scores_its_voice_against_the_prompt(demo, tmp_path, xvector):
    """The TTS twin: the output is transcribed by the model itself (WER against torchmetrics on the written
    transcripts; the demo says the held-out sentences), and SIM is the cosine of WavLM x-vectors of output and
    prompt, equal to the same model called directly on the written files."""
    from torchmetrics.functional.text import word_error_rate
    from transformers import AutoFeatureExtractor, WavLMForXVector

    from anygpt.evaluation.listeners import read_16k

    summary = evaluate(protocol(tmp_path, task="tts", limit=2, metrics=["wer", "sim"], recogniser="self",
                                speaker_model=str(xvector)), model=demo)
    lines = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    refs = [basic_normalize(line["reference"]) for line in lines]
    hyps = [basic_normalize(line["hypothesis"]) for line in lines]
    print(summary["metrics"], hyps)
    assert summary["metrics"]["wer"] == pytest.approx(float(word_error_rate(hyps, refs)), abs=1e-9)
    assert summary["metrics"]["wer"] <= 0.3  # the demo speaks held-out sentences its recogniser understands
    extractor, model = AutoFeatureExtractor.from_pretrained(xvector), WavLMForXVector.from_pretrained(xvector)

    def embed(path) -> torch.Tensor:
        inputs = extractor(read_16k(path), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            return torch.nn.functional.normalize(model(**inputs).embeddings[0].double(), dim=0)

    sims = [float(embed(line["output"]) @ embed(line["input"])) for line in lines]
    assert [line["scores"]["sim"] for line in lines] == pytest.approx(sims, abs=1e-6)
    assert summary["metrics"]["sim"] == pytest.approx(sum(sims) / len(sims), abs=1e-6)
    assert all(Path(line["output"]).is_file() and line["input"].endswith("_prompt.wav") for line in lines)


def test_unloadable_listeners_are_one_line():
    from anygpt.evaluation.listeners import ClapScorer, ClipScorer, Recogniser, SpeakerEncoder

    for make, word in ((lambda: Recogniser("/nonexistent/whisper"), "recogniser"),
                       (lambda: SpeakerEncoder("/nonexistent/wavlm"), "speaker_model"),
                       (lambda: ClipScorer("/nonexistent/clip"), "clip_model"),
                       (lambda: ClapScorer("/nonexistent/clap"), "clap_model")):
        with pytest.raises(AnyGPTError, match=word) as err:
            make()
        assert "\n" not in str(err.value)


def test_vctk_gives_one_prompt_and_sentence_per_speaker(demo, tmp_path, xvector):
    """A VCTK-shaped folder: each speaker's first utterance (cut to 3 s) prompts the text of its second; a speaker
    with one usable utterance is left out; the demo speaks the sentence."""
    import numpy as np
    import soundfile

    from anygpt.demo.heldout import read, speak
    from anygpt.tokenizers.audio import resample

    root = tmp_path / "VCTK"
    lines = read(modality="speech")[:3]
    for speaker, utterances in (("p225", lines[:2]), ("p226", lines[2:])):
        for k, line in enumerate(utterances, 1):
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "wav48_silence_trimmed" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "txt" / speaker / f"{speaker}_{k:03d}.txt").write_text(line["text"].capitalize() + ".\n")
            audio = speak(line)[0]
            audio = np.concatenate([audio, np.zeros(4 * 16000, np.float32)])  # at least 4 s
            wide = resample(torch.from_numpy(audio)[None], 16000, 48000)[0].numpy()
            soundfile.write(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{k:03d}_mic1.flac", wide, 48000)
    summary = evaluate(protocol(tmp_path, task="tts", samples="vctk", data_root=str(root), prompt_seconds=3.0,
                                metrics=["wer", "sim"], speaker_model=str(xvector), limit=None), model=demo)
    [line] = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert line["id"] == "p225" and line["reference"] == lines[1]["text"].capitalize() + "."
    assert soundfile.info(line["input"]).duration == pytest.approx(3.0, abs=1e-3)
    assert summary["samples"] == 1 and summary["metrics"]["wer"] <= 0.3, line
    with pytest.raises(AnyGPTError, match="no VCTK corpus"):
        evaluate(protocol(tmp_path, task="tts", samples="vctk", data_root=str(tmp_path)))


def test_t2i_writes_pictures_and_scores_them_with_clip(tmp_path, tiny_clip):
    """Text -> image on the random tiny model: every picture written, CLIP-T against its caption and CLIP-I against
    its reference photo (where the sample has one) equal to the same CLIP called directly on the written files."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    data = tmp_path / "coco"
    data.mkdir()
    Image.new("RGB", (48, 40), "red").save(data / "photo.png")
    listing = tmp_path / "pairs.jsonl"
    listing.write_text(json.dumps({"id": "a", "text": "a red bus", "image": "photo.png"}) + "\n"
                       + json.dumps({"id": "b", "text": "two cats"}) + "\n")
    summary = evaluate(protocol(tmp_path, task="t2i", model_config=str(ROOT / "configs/tiny.yaml"),
                                samples=str(listing), data_root=str(data), metrics=["clip_t", "clip_i"],
                                clip_model=str(tiny_clip), generation={}, limit=None))
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)

    def unit(features) -> torch.Tensor:
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features[0].double(), dim=0)

    with torch.no_grad():
        pictures = [unit(model.get_image_features(**processor(images=[Image.open(x["output"]).convert("RGB")],
                                                              return_tensors="pt"))) for x in lines]
        texts = [unit(model.get_text_features(**processor(text=[x["reference"]], return_tensors="pt")))
                 for x in lines]
        photo = unit(model.get_image_features(**processor(images=[Image.open(data / "photo.png")],
                                                          return_tensors="pt")))
    assert [x["scores"]["clip_t"] for x in lines] == pytest.approx([float(p @ t) for p, t in zip(pictures, texts)],
                                                                    abs=1e-6)
    assert lines[0]["scores"]["clip_i"] == pytest.approx(float(pictures[0] @ photo), abs=1e-6)
    assert "clip_i" not in lines[1]["scores"]  # no photo, no CLIP-I
    assert summary["metrics"]["clip_i"] == pytest.approx(lines[0]["scores"]["clip_i"])
    assert summary["metrics"]["clip_t"] == pytest.approx(sum(float(p @ t) for p, t in zip(pictures, texts)) / 2)


def test_coco_t2i_draws_images_with_seed_0_and_their_first_captions(tmp_path):
    import random

    from anygpt.evaluation.samples import read_samples

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 7, 19, 3, 88)]
    notes = [{"id": 10 * i + k, "image_id": i, "caption": f"caption {k} of {i} "} for i in (42, 7, 19, 3, 88)
             for k in (2, 1)]
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images,
                                                                            "annotations": notes}))
    samples = read_samples("coco_t2i", data_root=str(root), modality="image")
    assert [s.id for s in samples] == [str(i) for i in random.Random(0).sample([3, 7, 19, 42, 88], 5)]
    assert samples[0].reference == f"caption 1 of {samples[0].id}"  # the lowest annotation id, spaces tidied
    assert samples[0].source["image"] == f"val2014/COCO_val2014_{int(samples[0].id):012d}.jpg"
    with pytest.raises(AnyGPTError, match="gives 5 samples, the protocol pins 30000"):
        read_samples("coco_t2i", data_root=str(root), expected_count=30000, modality="image")


def test_caption_on_a_karpathy_shaped_split(tmp_path):
    """Picture -> text on the random tiny model: Karpathy's test images only, all references written, the corpus
    CIDEr-D and BLEU-4 of the summary those of the written captions."""
    from PIL import Image

    from anygpt.evaluation.caption_metrics import bleu4, cider_d, tokenize

    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    images = []
    for i, (colour, split) in enumerate((("red", "test"), ("blue", "train"), ("green", "test"))):
        Image.new("RGB", (40, 40), colour).save(root / "val2014" / f"{i}.jpg")
        images.append({"cocoid": i, "filepath": "val2014", "filename": f"{i}.jpg", "split": split,
                       "sentences": [{"raw": f"A {colour} square."}, {"raw": f"Something {colour}"}]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    summary = evaluate(protocol(tmp_path, task="caption", model_config=str(ROOT / "configs/tiny.yaml"),
                                samples="coco_karpathy", data_root=str(root), metrics=["cider", "bleu4"],
                                generation={"text": {"do_sample": False, "max_new_tokens": 8}}, limit=None))
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "2"] and lines[1]["references"] == ["A green square.", "Something green"]
    refs = [[tokenize(r) for r in x["references"]] for x in lines]
    hyps = [tokenize(x["hypothesis"]) for x in lines]
    assert summary["metrics"] == pytest.approx({"cider": cider_d(refs, hyps)[0], "bleu4": bleu4(refs, hyps)})
    with pytest.raises(AnyGPTError, match="no Karpathy split"):
        evaluate(protocol(tmp_path, task="caption", samples="coco_karpathy", data_root=str(tmp_path / "x"),
                          metrics=["cider"]))


def musiccaps_folder(tmp_path: Path) -> Path:
    """A MusicCaps-shaped folder: three rows, two of the evaluation set, one of those with its audio."""
    import numpy as np
    import soundfile

    root = tmp_path / "musiccaps"
    (root / "audio").mkdir(parents=True)
    rows = [("aaa", "A calm piano melody.", "True"), ("bbb", "Loud rock drums.", "False"),
            ("ccc", "A fast violin tune.", "True")]
    (root / "musiccaps-public.csv").write_text("ytid,start_s,end_s,caption,is_audioset_eval\n" + "".join(
        f'{y},30,40,"{c}",{e}\n' for y, c, e in rows))
    t = np.arange(2 * 16000) / 16000
    soundfile.write(root / "audio" / "aaa.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return root


def test_m2t_and_t2m_score_with_clap(tmp_path, tiny_clap):
    """Music -> text and text -> music on the random tiny model over MusicCaps' evaluation rows: a clip without
    audio is skipped and counted; CLAP cosines equal the same CLAP called directly on the written files."""
    from transformers import ClapModel, ClapProcessor

    from anygpt.evaluation.listeners import read_16k

    root = musiccaps_folder(tmp_path)
    model, processor = ClapModel.from_pretrained(tiny_clap).eval(), ClapProcessor.from_pretrained(tiny_clap)

    def unit(features) -> torch.Tensor:
        return torch.nn.functional.normalize(getattr(features, "pooler_output", features)[0].double(), dim=0)

    def audio(path) -> torch.Tensor:
        with torch.no_grad():
            return unit(model.get_audio_features(**processor.feature_extractor(
                [read_16k(path)], sampling_rate=16000, return_tensors="pt")))

    def text(caption: str) -> torch.Tensor:
        with torch.no_grad():
            return unit(model.get_text_features(**processor.tokenizer([caption], return_tensors="pt")))

    tiny = str(ROOT / "configs/tiny.yaml")
    m2t = evaluate(protocol(tmp_path / "m2t", task="m2t", model_config=tiny, samples="musiccaps", data_root=str(root),
                            metrics=["clap", "clap_reference", "bleu4"], clap_model=str(tiny_clap), limit=None,
                            generation={"text": {"do_sample": False, "max_new_tokens": 8}}))
    [line] = [json.loads(x) for x in (tmp_path / "m2t" / "out" / "samples.jsonl").read_text().splitlines()]
    assert m2t["samples"] == 2 and m2t["skipped"][0]["id"] == "ccc" and line["id"] == "aaa"
    clip = root / "audio" / "aaa.wav"
    assert line["scores"]["clap"] == pytest.approx(float(audio(clip) @ text(line["hypothesis"])), abs=1e-6)
    assert line["scores"]["clap_reference"] == pytest.approx(float(audio(clip) @ text("A calm piano melody.")),
                                                             abs=1e-6)
    t2m = evaluate(protocol(tmp_path / "t2m", task="t2m", model_config=tiny, samples="musiccaps", data_root=str(root),
                            metrics=["clap"], clap_model=str(tiny_clap), limit=None, generation={
                                "music": {"do_sample": True, "max_new_tokens": 40}}))
    lines = [json.loads(x) for x in (tmp_path / "t2m" / "out" / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["aaa", "ccc"] and t2m["scored"] == 2  # no audio needed to compose
    scores = [float(audio(x["output"]) @ text(x["reference"])) for x in lines]
    assert [x["scores"]["clap"] for x in lines] == pytest.approx(scores, abs=1e-6)
    assert t2m["metrics"]["clap"] == pytest.approx(sum(scores) / 2, abs=1e-6)
