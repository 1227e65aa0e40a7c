"""An evaluation protocol: which model, which pinned samples, how to decode, what to score, where to write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from anygpt import AnyGPTError

#: What each task generates from what: the request's source and target modality.
TASKS = {"asr": ("speech", "text"), "tts": ("text", "speech"), "t2i": ("text", "image"),
         "caption": ("image", "text"), "t2m": ("text", "music"), "m2t": ("music", "text"), "chat": ("chat", "text")}


@dataclass
class EvalProtocol:
    """One evaluation, as ``anygpt evaluate --config configs/eval/<task>.yaml`` reads it.

    Args:
        task: What is evaluated: ``asr`` (speech -> text: error rates of the transcript) or ``tts`` (text and a
            voice prompt -> speech: error rates of the output's transcript by ``recogniser``, and its speaker
            similarity to the prompt by ``speaker_model``) or ``t2i`` (caption -> picture: CLIP similarity of the
            picture to the caption, CLIP-T, and to the reference photo, CLIP-I, by ``clip_model``) or ``caption``
            (picture -> text: CIDEr-D and BLEU-4 against all of its reference captions) or ``t2m`` (caption ->
            music: CLAP similarity of the music to the caption) or ``m2t`` (music -> caption: CLAP similarity of
            the music to the written caption, beside its reference caption's, and CIDEr-D, BLEU-4) or ``chat``
            (a demo-world conversation, ``anygpt/demo/heldout_chat.jsonl``, -> a reply, written or spoken: whether
            it names every word its record's ``must_name`` lists and speaks when asked to).
        model_config: The predict config whose model is evaluated (``anygpt predict --config``).
        overrides: Command-line style arguments for that config, e.g. ``["--model.backbone", "my-export"]``.
        samples: ``librispeech``: every utterance under ``data_root`` (a LibriSpeech split's folder, its
            ``*.trans.txt`` transcripts), in id order; ``vctk``: one sample per VCTK 0.92 speaker under
            ``data_root`` (``anygpt.evaluation.samples.vctk``); ``coco_t2i``: 30k MS-COCO val2014 images drawn
            with seed 0, a caption each (``anygpt.evaluation.samples.coco_t2i``); ``coco_karpathy``: the 5000
            images of Karpathy's test split with their captions; ``musiccaps``: MusicCaps' evaluation clips
            (``anygpt.evaluation.samples.musiccaps``); the count checked against
            ``expected_count``; else
            the pinned sample list, one JSON object per line: ``id``, ``text`` (the reference) and ``audio``
            (asr) or ``prompt`` (tts: the voice prompt), paths under ``data_root``; or a line of the demo world's
            held-out list (``anygpt/demo/heldout.jsonl``: ``modality``, ``text``, ``attributes``), whose speech is
            rendered by espeak-ng (tts: the prompt is the next line's sentence in this line's voice), whose pictures
            and melodies are drawn and played from their attributes; or (chat) a held-out conversation of
            ``anygpt/demo/heldout_chat.jsonl``, its ``answer`` the reference.
        data_root: Where the data set the sample paths name lies (LibriSpeech's ``LibriSpeech/test-clean``, say).
        download_hint: What to download when ``data_root`` lacks a sample (said in the error).
        expected_count: How many samples the data set must give (a whole split pinned by its size).
        prompt_seconds: tts: a data set's voice prompt is its first ``prompt_seconds`` (the paper: 3 s); None:
            all of it.
        limit: Evaluate only the first ``limit`` samples (None: all).
        batch_size: Samples generated together.
        seed: Sample ``i`` of the list is generated with seed ``seed + i``, whatever the batch or a resumed run.
        instruction: The one instruction every sample's prompt carries (a protocol pins it); None draws one from
            the model's pools with the sample's seed (each sample's is written to ``samples.jsonl``).
        generation: Decoding per target over the model config's presets, e.g. ``{text: {num_beams: 5, do_sample:
            false}}`` (the paper's Table 9).
        metrics: What is scored: ``wer`` and ``cer`` (jiwer, corpus-level: edits over reference words or
            characters); tts also ``sim`` (mean cosine of output and prompt speaker embeddings); t2i ``clip_t`` and
            ``clip_i`` (mean cosines; the paper's 0.65 is CLIP-I, picture against photo); caption ``cider`` and
            ``bleu4`` (corpus-level, ``anygpt.evaluation.caption_metrics``); t2m ``clap``; m2t ``clap``,
            ``clap_reference`` (the real caption's), ``cider``, ``bleu4``. On the demo world's held-out lines, by
            its analysers (``anygpt.demo.verdicts``), shares of the samples: t2i and t2m ``judged`` (the picture
            shows exactly the caption's coloured shapes; the melody has its tempo within 10 % and its key and mode),
            t2m also ``tempo`` and ``key`` alone; caption, m2t and chat ``named`` (names every colour and shape;
            instrument, tempo class and mode; the record's ``must_name``); chat ``spoken_as_asked``.
        recogniser: tts and chat: who transcribes the spoken output: ``self`` (the evaluated model's own speech ->
            text) or a transformers speech-recognition model by id or path (the paper: ``openai/whisper-medium``).
        speaker_model: tts: a transformers ``WavLMForXVector`` by id or path (the paper's SIM model) or
            ``resemblyzer``.
        clip_model: t2i: a transformers ``CLIPModel`` (with its processor) by id or path.
        clap_model: t2m, m2t: a transformers ``ClapModel`` (with its processor) by id or path.
        normalizer: Text normalisation of both sides before scoring: ``basic`` (lowercase, punctuation dropped,
            spaces collapsed), ``whisper`` (Whisper's English normaliser, as the paper's peers score) or ``none``.
        normalizer_mapping: ``whisper``: where its spelling map (``normalizer.json``) comes from, a Whisper
            tokenizer's repo id or folder, or the file.
        output_dir: Where ``samples.jsonl``, ``summary.json`` and ``table.md`` are written (and generated media).
    """

    task: Literal["asr", "tts", "t2i", "caption", "t2m", "m2t", "chat"]
    model_config: str
    samples: str
    output_dir: str
    overrides: list[str] = field(default_factory=list)
    data_root: str | None = None
    download_hint: str | None = None
    expected_count: int | None = None
    prompt_seconds: float | None = None
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    instruction: str | None = None
    generation: dict[str, dict] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["wer"])
    normalizer: Literal["basic", "whisper", "none"] = "basic"
    normalizer_mapping: str = "openai/whisper-medium"
    recogniser: str = "self"
    speaker_model: str = "microsoft/wavlm-base-plus-sv"
    clip_model: str = "openai/clip-vit-large-patch14"
    clap_model: str = "laion/larger_clap_music"

    def __post_init__(self):
        from anygpt.evaluation.scorers import METRICS

        unknown = [m for m in self.metrics if m not in METRICS.get(self.task, {})]
        if unknown:
            raise AnyGPTError(f"metrics: {unknown[0]!r} is not a metric of task {self.task} (known: "
                              f"{', '.join(METRICS.get(self.task, {}))})")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise AnyGPTError(f"batch_size and limit must be at least 1, got {self.batch_size} and {self.limit}")
