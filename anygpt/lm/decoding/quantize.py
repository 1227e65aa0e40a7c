"""Weight-only int8 quantization of the backbone for inference on 16-24 GB GPUs (through torchao).

A LLaMA-2-7B backbone holds 13.5 GB of bf16 weights; int8 with one scale per output row halves that to ~7 GB
(embeddings stay in bf16). The quantized weights are torchao ``Int8Tensor`` parameters: every transformers code
path runs on them (dequantizing per product), and the fast decode loop compiles them into its batch-1 layer, where
the int8 read is fused into each matrix-vector reduction.
"""

from __future__ import annotations

from torch import Tensor, nn

from anygpt import AnyGPTError

SCHEMES = ("int8",)


def quantize_backbone(model: nn.Module, scheme: str) -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` in place (``scheme`` ``int8``: symmetric, per output row).

    Raises:
        AnyGPTError: An unknown scheme, or torchao is not installed.
    """
    if scheme not in SCHEMES:
        raise AnyGPTError(f"quantize: {scheme!r} is not a known scheme (choose one of {', '.join(SCHEMES)})")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise AnyGPTError("quantize: int8 needs torchao (pip install 'anygpt[quant]')") from error
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, name: isinstance(module, nn.Linear))
    return model


def is_quantized(weight: Tensor) -> bool:
    """True for a tensor subclass that wraps other tensors (a torchao quantized weight)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(weight)


def storage_key(weight: Tensor) -> int:
    """An address that changes when the weight's storage does (plain or quantized)."""
    if is_quantized(weight):
        names, _ = weight.__tensor_flatten__()
        return storage_key(getattr(weight, names[0]))
    return weight.data_ptr()
