"""Distillation targets for the semantic RVQ level: a HuBERT feature teacher, its D-axis loss, phoneme frame labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anygpt import AnyGPTError
from anygpt.messages import one_line

UNKNOWN = "<unk>"  # the class of phoneme labels missing from the configured vocabulary


class HubertTeacher(nn.Module):
    """Frozen HuBERT frame features at 50 Hz: a distillation teacher for SpeechTokenizer's RVQ level 1.

    By default the mean of all hidden states (the CNN projection and every transformer layer), as the original's
    ``semantic_model_layer: "avg"``.

    Args:
        model: A Hugging Face id or local folder of a ``transformers.HubertModel`` (``facebook/hubert-base-ls960``
            gives 768-d features, the released SpeechTokenizer's ``semantic_dimension``).
        config: ``HubertConfig`` fields for a randomly initialised HuBERT instead of ``model`` (tests).
        layer: ``"avg"`` (mean of all hidden states) or the index of one hidden state.
        normalize: Scale each clip to zero mean and unit variance first (for checkpoints whose feature extractor
            sets ``do_normalize``; hubert-base-ls960's does not).
    """

    def __init__(self, model: str = "facebook/hubert-base-ls960", config: dict | None = None,
                 layer: int | str = "avg", normalize: bool = False):
        super().__init__()
        from transformers import HubertConfig, HubertModel

        if layer != "avg" and not isinstance(layer, int):
            raise AnyGPTError(f"HubertTeacher: layer must be 'avg' or a hidden-state index, got {layer!r}")
        if config is not None:
            self.model = HubertModel(HubertConfig(**config))
        else:
            from anygpt.hub import resolve

            path = resolve(model, ignore=["*.h5", "*.msgpack", "*.onnx", "*.ot"])
            try:
                self.model = HubertModel.from_pretrained(str(path))
            except (OSError, ValueError) as err:
                raise AnyGPTError(f"cannot load the HuBERT teacher {model}: {one_line(err)}") from err
        count = self.model.config.num_hidden_layers + 1
        if layer != "avg" and not -count <= layer < count:
            raise AnyGPTError(f"HubertTeacher: layer {layer} is out of range; the model has {count} hidden states")
        self.layer, self.normalize = layer, normalize
        self.dimension = int(self.model.config.hidden_size)
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> HubertTeacher:
        """Stays in eval mode: the teacher is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Features ``[B, T, dimension]`` of 16 kHz audio ``[B, L]`` (T = (L - 400) // 320 + 1)."""
        if audio.shape[-1] < 400:
            raise AnyGPTError(f"HubertTeacher needs at least 400 samples (25 ms), got {audio.shape[-1]}")
        if self.normalize:
            audio = (audio - audio.mean(-1, keepdim=True)) / (audio.var(-1, keepdim=True) + 1e-7).sqrt()
        states = self.model(audio, output_hidden_states=True).hidden_states
        return torch.stack(states).mean(0) if self.layer == "avg" else states[self.layer]


def d_axis_loss(student: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """SpeechTokenizer's D-axis distillation loss: ``-mean log sigmoid(cos)``, the cosine taken over time between
    each feature dimension of ``student`` and ``target`` ``[B, T, D]`` (cut to the shorter T).

    Frames where ``valid [B, T]`` is False are zeroed in both, so padding adds nothing to the cosines.
    """
    if student.shape[-1] != target.shape[-1]:
        raise AnyGPTError(f"distillation: the teacher gives {target.shape[-1]}-d features, but the codec's "
                          f"semantic_dimension is {student.shape[-1]}")
    n = min(student.shape[1], target.shape[1])
    student, target = student[:, :n], target[:, :n].to(student.dtype)
    if valid is not None:
        weight = valid[:, :n, None].to(student.dtype)
        student, target = student * weight, target * weight
    return -F.logsigmoid(F.cosine_similarity(student, target, dim=1)).mean()


def standardize_over_time(features: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Each clip's features ``[B, T, D]`` shifted and scaled to zero mean and unit variance over its real frames.

    The phoneme classifier reads RVQ level 1 through it: a from-scratch encoder's output is mostly a common
    offset that moves from step to step, with the frame-to-frame differences that carry the phonemes far smaller.
    """
    weight = torch.ones_like(features[..., :1]) if valid is None else valid[..., None].to(features.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1.0)
    mean = (features * weight).sum(1, keepdim=True) / count
    var = ((features - mean) ** 2 * weight).sum(1, keepdim=True) / count
    return (features - mean) / (var + eps).sqrt()


def frame_labels(items: Sequence[dict], offsets: Sequence[float], frames: int, frame_seconds: float,
                 vocabulary: dict[str, int], speeds: Sequence[float] | None = None) -> torch.Tensor:
    """Class of each frame ``[B, frames]`` from the records' ``phonemes: [[label, start_s, end_s], ...]``.

    Frame ``t`` of a clip starting ``offset`` seconds into its file is labelled by the phoneme whose
    ``[start, end)`` holds its centre, ``offset + (t + 0.5) * frame_seconds * speed`` (``speeds``: how much faster
    than recorded each clip plays; 1 when None). Labels missing from
    ``vocabulary`` take its ``<unk>`` class; frames without a phoneme (or records without ``phonemes``) get -100.

    Raises:
        AnyGPTError: A malformed ``phonemes`` field, naming the record's path.
    """
    out = torch.full((len(items), frames), -100, dtype=torch.long)
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) * frame_seconds
    for row, (item, offset) in enumerate(zip(items, offsets)):
        phonemes = item.get("phonemes")
        if phonemes is None:
            continue
        if not isinstance(phonemes, list):
            raise AnyGPTError(f"{item.get('path')}: phonemes must be a list of [label, start_s, end_s]")
        times = centres * (1.0 if speeds is None else float(speeds[row])) + float(offset)
        first, last = float(times[0]), float(times[-1])
        for entry in phonemes:
            try:
                label, start, end = entry
                start, end = float(start), float(end)
            except (TypeError, ValueError):
                raise AnyGPTError(f"{item.get('path')}: phonemes entries must be [label, start_s, end_s], "
                                  f"got {entry!r}") from None
            if end <= first or start > last:
                continue
            out[row, (times >= start) & (times < end)] = vocabulary.get(str(label), vocabulary[UNKNOWN])
    return out
