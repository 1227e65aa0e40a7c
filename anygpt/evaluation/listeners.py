"""What the TTS protocols listen with: a recogniser (the output's transcript) and a speaker encoder (its voice).

Recognisers: ``self`` (the evaluated model's own speech -> text, as the demo world's benchmark listens) or a
transformers speech-recognition model by Hugging Face id or local path (the paper: Whisper medium). Speaker
encoders: a transformers ``WavLMForXVector`` by id or path (the paper's SIM: ``microsoft/wavlm-base-plus-sv``, as
UniAudio's script computes it) or ``resemblyzer`` (its pip package carries its weights: offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anygpt import AnyGPTError
from anygpt.messages import one_line

RATE = 16000


def read_16k(path: str | Path) -> np.ndarray:
    """A file's audio as mono float32 at 16 kHz."""
    import soundfile
    import torch

    from anygpt.tokenizers.audio import resample

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(audio.mean(axis=1))[None]
    return resample(wave, rate, RATE)[0].numpy() if rate != RATE else wave[0].numpy()


class Recogniser:
    """Transcribes files: ``self`` (the model under evaluation, speech -> text) or a transformers ASR model."""

    def __init__(self, name: str, model=None):
        self.name, self.model, self.pipe = name, model, None
        if name != "self":
            try:
                from transformers import pipeline

                self.pipe = pipeline("automatic-speech-recognition", model=name, device="cpu")
            except (OSError, ValueError) as err:
                raise AnyGPTError(f"recogniser: cannot load {name} ({one_line(err)})") from None

    def __call__(self, paths: Sequence[Path], seed: int) -> list[str]:
        if self.pipe is not None:
            return [self.pipe({"raw": read_16k(p), "sampling_rate": RATE})["text"] for p in paths]
        import torch

        from anygpt.data.requests import read_requests

        requests = read_requests([f"speech|text|{Path(p).resolve()}" for p in paths])
        for i, request in enumerate(requests):
            request.seed = seed + i
        with torch.inference_mode():
            return [a.get("text") or "" for a in self.model.predict_step(requests)]


class SpeakerEncoder:
    """Unit-length speaker embeddings of files: a transformers ``WavLMForXVector`` or ``resemblyzer``."""

    def __init__(self, name: str):
        self.name = name
        try:
            if name == "resemblyzer":
                from resemblyzer import VoiceEncoder, preprocess_wav

                encoder = VoiceEncoder("cpu", verbose=False)
                self._embed = lambda wave: encoder.embed_utterance(preprocess_wav(wave, source_sr=RATE))
            else:
                from transformers import AutoFeatureExtractor, WavLMForXVector

                extractor = AutoFeatureExtractor.from_pretrained(name)
                model = WavLMForXVector.from_pretrained(name).eval()
                self._embed = lambda wave: self._xvector(extractor, model, wave)
        except (OSError, ValueError, ImportError) as err:
            raise AnyGPTError(f"speaker_model: cannot load {name} ({one_line(err)})") from None

    @staticmethod
    def _xvector(extractor, model, wave: np.ndarray) -> np.ndarray:
        import torch

        inputs = extractor(wave, sampling_rate=RATE, return_tensors="pt")
        with torch.inference_mode():
            return model(**inputs).embeddings[0].numpy()

    def __call__(self, path: Path) -> np.ndarray:
        vector = np.asarray(self._embed(read_16k(path)), dtype=np.float64)
        return vector / max(np.linalg.norm(vector), 1e-12)

    def similarity(self, a: Path, b: Path) -> float:
        """Cosine of the two files' speaker embeddings."""
        return float(self(a) @ self(b))


class ClipScorer:
    """CLIP cosines of pictures with pictures (CLIP-I) and with captions (CLIP-T): a transformers ``CLIPModel``
    with its processor, by Hugging Face id or local path (the paper's peers: ``openai/clip-vit-large-patch14``)."""

    def __init__(self, name: str):
        self.model, self.processor = _model_and_processor("CLIPModel", "CLIPProcessor", name, "clip_model")

    def image(self, picture) -> np.ndarray:
        """The unit CLIP embedding of a PIL picture."""
        import torch

        with torch.inference_mode():
            inputs = self.processor(images=[picture.convert("RGB")], return_tensors="pt")
            return _unit(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    def text(self, caption: str) -> np.ndarray:
        """The unit CLIP embedding of a caption (cut to CLIP's 77 tokens)."""
        import torch

        with torch.inference_mode():
            inputs = self.processor(text=[caption], return_tensors="pt", padding=True, truncation=True,
                                    max_length=77)
            return _unit(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))


class ClapScorer:
    """CLAP cosines of audio with text: a transformers ``ClapModel`` with its processor, by Hugging Face id or local
    path (default in the MusicCaps protocols: ``laion/larger_clap_music``)."""

    def __init__(self, name: str):
        self.model, self.processor = _model_and_processor("ClapModel", "ClapProcessor", name, "clap_model")
        self.rate = int(self.processor.feature_extractor.sampling_rate)

    def audio(self, path: str | Path) -> np.ndarray:
        """The unit CLAP embedding of an audio file (mono, resampled to the model's rate)."""
        import soundfile
        import torch

        from anygpt.tokenizers.audio import resample

        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        wave = resample(torch.from_numpy(samples.mean(axis=1))[None], rate, self.rate)[0].numpy()
        with torch.inference_mode():
            inputs = self.processor.feature_extractor([wave], sampling_rate=self.rate, return_tensors="pt")
            return _unit(self.model.get_audio_features(**inputs))

    def text(self, caption: str) -> np.ndarray:
        """The unit CLAP embedding of a caption."""
        import torch

        with torch.inference_mode():
            inputs = self.processor.tokenizer([caption], return_tensors="pt", padding=True, truncation=True)
            return _unit(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))


def _model_and_processor(model_class: str, processor_class: str, name: str, field: str):
    """A transformers model (in eval mode) and its processor from ``name``; one line naming ``field`` if not."""
    import transformers

    try:
        model = getattr(transformers, model_class).from_pretrained(name).eval()
        return model, getattr(transformers, processor_class).from_pretrained(name)
    except (OSError, ValueError) as err:
        raise AnyGPTError(f"{field}: cannot load {name} ({one_line(err)})") from None


def _unit(features) -> np.ndarray:
    """The first row of an embedding output (transformers v5 returns an output object) as a unit float64 vector."""
    features = getattr(features, "pooler_output", features)
    vector = features[0].double().numpy()
    return vector / max(np.linalg.norm(vector), 1e-12)
