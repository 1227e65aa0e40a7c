"""``anygpt evaluate`` on the demo world (CPU): the ASR twin end to end, its WER against torchmetrics computed
directly on the written samples, a resumed run that ends with the same summary, and bad inputs in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.evaluation.protocol import EvalProtocol
from anygpt.evaluation.runner import evaluate
from anygpt.evaluation.scorers import basic_normalize

ROOT = Path(__file__).resolve().parents[2]
GREEDY = {"text": {"num_beams": 1, "do_sample": False, "max_new_tokens": 40}}


@pytest.fixture(scope="module")
def demo():
    from anygpt.cli_classes import load_predict_model
    from anygpt.demo.session import WEIGHTS

    if not (WEIGHTS / "lm" / "config.json").is_file():
        pytest.skip("the demo weights are not shipped in this checkout")
    return load_predict_model(ROOT / "configs" / "demo.yaml", root=ROOT)


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


def test_demo_asr_scores_what_it_wrote_and_resumes_to_the_same_summary(demo, tmp_path):
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    counting = Counting(demo)
    summary = evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=counting)
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3] and counting.asked == 4
    assert {line["instruction"] for line in lines} == {"Transcribe the audio."}  # pinned, not drawn
    refs = [basic_normalize(line["reference"]) for line in lines]
    hyps = [basic_normalize(line["hypothesis"]) for line in lines]
    print(summary["metrics"], hyps)
    assert summary["metrics"]["wer"] == pytest.approx(float(word_error_rate(hyps, refs)), abs=1e-9)
    assert summary["metrics"]["cer"] == pytest.approx(float(char_error_rate(hyps, refs)), abs=1e-9)
    assert summary["metrics"]["wer"] <= 0.25  # the shipped demo hears its held-out speakers (benchmark: 3.7 %)
    assert summary["scored"] == summary["samples"] == 4 and summary["failed"] == []
    assert "wer" in (out / "table.md").read_text()
    first = (out / "summary.json").read_text()
    # an interruption after the first batch: the rerun generates the other two and ends with the same files
    (out / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[:2]))
    (out / "summary.json").unlink()
    again = Counting(demo)
    evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=again)
    assert again.asked == 2 and (out / "summary.json").read_text() == first
    evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=again)  # nothing left to do
    assert again.asked == 2
    with pytest.raises(AnyGPTError, match=r"another protocol \(changed: generation, seed\)") as err:
        evaluate(protocol(tmp_path, instruction="Transcribe the audio.", seed=1, generation={"text": {
            "num_beams": 2, "do_sample": False}}), model=again)
    assert "\n" not in str(err.value) and again.asked == 2


def test_missing_and_corrupt_samples(tmp_path):
    data = tmp_path / "LibriSpeech"
    data.mkdir()
    listing = tmp_path / "pinned.jsonl"
    listing.write_text(json.dumps({"id": "a", "audio": "a.flac", "text": "hello"}) + "\n")
    with pytest.raises(AnyGPTError, match="download: openslr.org/12") as err:
        evaluate(protocol(tmp_path, samples=str(listing), data_root=str(tmp_path / "nowhere"),
                          download_hint="openslr.org/12 test-clean"))
    assert "\n" not in str(err.value)
    summary = evaluate(protocol(tmp_path, samples=str(listing), data_root=str(data)))  # its file is missing
    assert summary["skipped"] == [{"id": "a", "problem": f"missing file {data / 'a.flac'}"}]
    assert summary["scored"] == 0 and summary["metrics"] == {"wer": None, "cer": None}
    assert "n/a" in (tmp_path / "out" / "table.md").read_text()
    listing.write_text("not json\n")
    with pytest.raises(AnyGPTError, match="pinned.jsonl:1: not JSON"):
        evaluate(protocol(tmp_path, samples=str(listing)))
    with pytest.raises(AnyGPTError, match="no sample list"):
        evaluate(protocol(tmp_path, samples=str(tmp_path / "absent.jsonl")))


def test_bad_protocols_are_one_line(capsys):
    from anygpt.cli import main

    with pytest.raises(AnyGPTError, match="'bleu' is not a metric of task asr"):
        EvalProtocol(task="asr", model_config="x", samples="y", output_dir="z", metrics=["bleu"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", str(ROOT / "configs/eval/demo_asr.yaml"), "--metrics", "[bleu]"])
    err = capsys.readouterr().err
    assert "bleu" in err and len(err.strip().splitlines()) <= 3, err


def test_basic_normaliser_on_explicit_cases():
    assert basic_normalize("Hello, World!  It's  OK.") == "hello world it's ok"
    assert basic_normalize("'quoted' text -- dash") == "quoted text dash"
    assert basic_normalize("") == ""


def test_wer_scorer_agrees_with_torchmetrics_on_edits():
    from torchmetrics.functional.text import word_error_rate

    from anygpt.evaluation.scorers import METRICS

    refs, hyps = ["the cat sat on the mat", "a b c"], ["the cat sat on mat", ""]
    assert METRICS["asr"]["wer"](refs, hyps) == pytest.approx(float(word_error_rate(hyps, refs)))
    assert METRICS["asr"]["wer"](refs, hyps) == pytest.approx(4 / 9)
    assert torch.isfinite(torch.tensor(METRICS["asr"]["cer"](refs, hyps)))


@pytest.fixture(scope="module")
def xvector(tmp_path_factory) -> Path:
    """A tiny random WavLMForXVector with its feature extractor, saved where the protocol can load it offline."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(16, 16), conv_stride=(5, 5), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1),
                         tdnn_dilation=(1, 1), xvector_output_dim=12)
    folder = tmp_path_factory.mktemp("xvector")
    WavLMForXVector(config).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(folder)
    return folder


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
    from anygpt.evaluation.listeners import Recogniser, SpeakerEncoder

    for make, word in ((lambda: Recogniser("/nonexistent/whisper"), "recogniser"),
                       (lambda: SpeakerEncoder("/nonexistent/wavlm"), "speaker_model")):
        with pytest.raises(AnyGPTError, match=word) as err:
            make()
        assert "\n" not in str(err.value)


def test_a_librispeech_split_is_read_in_id_order_with_its_transcripts(demo, tmp_path):
    """A LibriSpeech-shaped folder (two speakers, upper-case transcripts, FLAC): every utterance in id order, the
    count checked against the protocol's pin, and the demo transcribes them (its own held-out sentences)."""
    import soundfile

    from anygpt.demo.heldout import read, speak

    root = tmp_path / "test-clean"
    lines = read(modality="speech")[:3]
    for (speaker, chapter, utt), line in zip([("908", "31957", 1), ("121", "121726", 0), ("908", "31957", 0)],
                                             lines):
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        ident = f"{speaker}-{chapter}-{utt:04d}"
        soundfile.write(folder / f"{ident}.flac", speak(line)[0], 16000)
        with (folder / f"{speaker}-{chapter}.trans.txt").open("a") as f:
            f.write(f"{ident} {line['text'].upper()}\n")
    summary = evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), expected_count=3,
                                limit=None), model=demo)
    written = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in written] == ["121-121726-0000", "908-31957-0000", "908-31957-0001"]
    assert written[0]["reference"] == lines[1]["text"].upper()
    assert summary["scored"] == 3 and summary["metrics"]["wer"] <= 0.25, written
    # a corrupt file: its request fails, it is written with its error, counted, and not scored
    broken = root / "908" / "31957" / "908-31957-0002.flac"
    broken.write_bytes(b"not audio at all")
    with (root / "908" / "31957" / "908-31957.trans.txt").open("a") as f:
        f.write("908-31957-0002 A BROKEN FILE\n")
    again = evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), limit=None), model=demo)
    assert again["scored"] == 3 and [x["id"] for x in again["failed"]] == ["908-31957-0002"]
    assert again["failed"][0]["error"]  # its reason, in one line
    assert again["metrics"] == summary["metrics"]
    with pytest.raises(AnyGPTError, match="gives 4 samples, the protocol pins 2620"):
        evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), expected_count=2620))
    with pytest.raises(AnyGPTError, match="no LibriSpeech split"):
        evaluate(protocol(tmp_path, samples="librispeech", data_root=str(tmp_path / "none")))


def test_whisper_normaliser_with_its_spelling_map(tmp_path):
    from anygpt.evaluation.scorers import normalizer

    (tmp_path / "normalizer.json").write_text(json.dumps({"colour": "color"}))
    whisper = normalizer("whisper", str(tmp_path))
    assert whisper("The COLOUR of twenty-one boxes, isn't it?") == "the color of 21 boxes is not it"
    assert whisper("Mr. Brown") == "mister brown"
    with pytest.raises(AnyGPTError, match="normalizer_mapping: no normalizer.json") as err:
        normalizer("whisper", str(tmp_path / "empty"))
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


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIPModel with a character-level tokenizer and a 32-px image processor, saved locally."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(letters)},
             **{c + "</w>": 28 + i for i, c in enumerate(letters)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "bos_token_id": 0,
                                     "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


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


CAPTIONS = [["a cat sits on the mat", "there is a cat on a mat", "cat on mat"],
            ["a dog runs in the park", "the dog is running", "a brown dog"],
            ["two people ride bikes", "people riding bicycles on a road"]]


def test_cider_d_equals_the_coco_scorer():
    """CIDEr-D as pycocoevalcap's Cider computes it (where that package is installed: 104 MB, not a dependency)."""
    from anygpt.evaluation.caption_metrics import cider_d

    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    hyps = ["a cat on a mat", "a dog is running in a park", "a man rides a bike"]
    corpus, each = cider_d(CAPTIONS, hyps)
    theirs, their_each = cider.Cider().compute_score({i: r for i, r in enumerate(CAPTIONS)},
                                                     {i: [h] for i, h in enumerate(hyps)})
    assert corpus == pytest.approx(float(theirs), abs=1e-9)
    assert each == pytest.approx([float(x) for x in their_each], abs=1e-9)


def test_cider_d_prefers_the_right_caption_and_bleu4_is_torchmetrics():
    from torchmetrics.text import BLEUScore

    from anygpt.evaluation.caption_metrics import bleu4, cider_d, tokenize

    right = cider_d(CAPTIONS, ["a cat on a mat", "the dog is running", "people riding bikes"])[0]
    swapped = cider_d(CAPTIONS, ["the dog is running", "people riding bikes", "a cat on a mat"])[0]
    assert right > 1.0 > swapped >= 0.0
    assert cider_d(CAPTIONS, [refs[0] for refs in CAPTIONS])[1][0] > cider_d(CAPTIONS, ["cat"] * 3)[1][0]
    hyps = ["a cat on a mat", "a dog is running in the park", "two people ride bikes"]
    metric = BLEUScore(n_gram=4)
    metric.update(hyps, CAPTIONS)
    assert bleu4(CAPTIONS, hyps) == pytest.approx(float(metric.compute()), abs=1e-9)
    assert tokenize("A Cat, on the MAT!") == "a cat on the mat"
    with pytest.raises(ValueError, match="one hypothesis per image"):
        cider_d(CAPTIONS, ["a"])


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


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory) -> Path:
    """A tiny random ClapModel with a byte-level RoBERTa tokenizer and a 16-kHz feature extractor, saved locally."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("clap")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(bytes_to_unicode().values())))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    features = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=2,
                                    fft_window_size=400, truncation="rand_trunc")
    torch.manual_seed(0)
    audio = {"depths": [1, 1], "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 16, "hidden_size": 32,
             "window_size": 4, "spec_size": 64, "num_mel_bins": 16, "patch_stride": [4, 4], "patch_size": 4,
             "enable_fusion": False}
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 80, "pad_token_id": 1}
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(folder)
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    return folder


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
