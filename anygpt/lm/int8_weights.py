"""Weight-only int8 storage of an exported backbone (``anygpt export --dtype int8``).

Each 2-D float weight (projections, embeddings) is stored as int8 with one float16 scale per row (symmetric, round
to nearest: ``weight ~ int8 * scale``, ``scale = max|row| / 127``); other tensors (norms) stay float16. A float16
folder's weights take about half the bytes. Loading turns them back into float weights, so the model runs on the
usual kernels, within rounding of the float16 export.

The folder holds ``model.int8.safetensors`` (``<name>`` int8 and ``<name>.int8_scale`` float16 for each stored
weight) beside the usual ``config.json``, and no ``model.safetensors``: transformers alone does not read it,
``UnifiedLM`` (``backbone=<folder>``) and ``load_int8`` do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anygpt import AnyGPTError

FILE = "model.int8.safetensors"
SCALE = ".int8_scale"


def quantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every 2-D float tensor as int8 plus its per-row float16 scale; other float tensors float16."""
    out = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.ndim == 2:
            weight = tensor.float()
            scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float16).tiny)
            scale = scale.half()
            out[name] = (weight / scale.float()).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[name + SCALE] = scale.contiguous()
        else:
            out[name] = (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
    return out


def dequantize(stored: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The float state dict of ``quantize``'s output, in ``dtype``.

    Raises:
        AnyGPTError: An int8 tensor without its scale, a scale without its tensor, or a scale of the wrong shape.
    """
    out = {}
    for name, tensor in stored.items():
        if name.endswith(SCALE):
            if name[: -len(SCALE)] not in stored:
                raise AnyGPTError(f"{FILE}: scale {name!r} has no weight {name[: -len(SCALE)]!r}")
            continue
        if tensor.dtype == torch.int8:
            scale = stored.get(name + SCALE)
            if scale is None or scale.shape != (tensor.shape[0], 1):
                raise AnyGPTError(f"{FILE}: int8 weight {name!r} needs a [{tensor.shape[0]}, 1] scale "
                                  f"{name + SCALE!r}, found {None if scale is None else tuple(scale.shape)}")
            out[name] = (tensor.float() * scale.float()).to(dtype)
        else:
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def is_int8(folder: str | Path) -> bool:
    """Whether ``folder`` is an int8 export (holds ``model.int8.safetensors``)."""
    return (Path(folder) / FILE).is_file()


def write_int8(folder: str | Path) -> Path:
    """Turn a ``save_pretrained`` folder's single ``model.safetensors`` into ``model.int8.safetensors``.

    Raises:
        AnyGPTError: The folder's weights are not one ``model.safetensors`` file (sharded or missing).
    """
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    source = folder / "model.safetensors"
    if not source.is_file():
        raise AnyGPTError(f"{folder}: int8 export needs the weights in one model.safetensors (raise --max_shard_size)")
    save_file(quantize(load_file(source)), folder / FILE, metadata={"format": "pt", "anygpt": "int8-rowwise"})
    source.unlink()
    return folder / FILE


def load_int8(folder: str | Path, dtype: torch.dtype = torch.float32, **kwargs):
    """The causal LM of an int8 export folder, its weights dequantized into ``dtype``; ``kwargs`` go to
    ``AutoModelForCausalLM.from_config`` (``attn_implementation``, say).

    Raises:
        AnyGPTError: The stored weights do not fit the folder's config (one line naming the first key).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    state = dequantize(load_file(folder / FILE), dtype)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ: torch lists them on the lines after its first
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise AnyGPTError(f"{folder / FILE}: does not fit its config: {lines[min(1, len(lines) - 1)]}") from None
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise AnyGPTError(f"{folder / FILE}: does not fit its config: missing {missing[:1]}, unexpected "
                          f"{unexpected[:1]}")
    model.tie_weights()
    return model.eval()
