"""Parameter-efficient fine-tuning of the backbone: LoRA adapters (through ``peft``) and trained modality-token rows.

``add_lora`` freezes the backbone, puts LoRA adapters on its projections and, with ``train_token_rows``, lets the
embedding and output rows of the ids from ``start`` on (the modality tokens: codec codes, tags, role and added
tokens) train while the text rows stay frozen. Those rows live in ``TokenRows`` modules that hold a trainable copy
of the tail rows only: peft's own ``trainable_token_indices`` rebuilds the whole ``[vocab, hidden]`` matrix in
every forward (and takes its dense gradient), and cannot index an int8 (torchao) output layer, which QLoRA needs.

Checkpoints hold the trained tensors only (``drop_frozen``); ``refill_frozen`` puts the current model's frozen
tensors back before a strict load, so a checkpoint belongs to the base it was trained on. ``merge_lora`` folds
everything into the base weights and returns a plain transformers model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anygpt import AnyGPTError
from anygpt.messages import one_line
from anygpt.lm.decoding.quantize import is_quantized

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    """What ``UnifiedLM(lora=...)`` trains.

    Args:
        r: Rank of each adapter.
        alpha: Adapter scale numerator: a projection adds ``alpha / r * B(A(x))``.
        dropout: Dropout on the adapters' inputs.
        target_modules: Names of the backbone's linear layers that get adapters (LLaMA's projections).
        train_token_rows: Also train the embedding and output rows of the modality tokens (ids from the text
            vocabulary's size on); the text rows stay frozen.
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = PROJECTIONS
    train_token_rows: bool = True

    @classmethod
    def parse(cls, value: Any) -> LoraSpec | None:
        """A spec from a mapping of its fields (None: no LoRA; ``{}``: every default).

        Raises:
            AnyGPTError: An unknown key or a bad value (one line naming it).
        """
        if value is None or isinstance(value, cls):
            return value
        if hasattr(value, "as_dict"):
            value = value.as_dict()
        if not isinstance(value, dict):
            raise AnyGPTError(f"lora must be a mapping of {', '.join(f.name for f in fields(cls))}, got {value!r}")
        known = [f.name for f in fields(cls)]
        for key in value:
            if key not in known:
                raise AnyGPTError(f"lora: unknown key {key!r} (known: {', '.join(known)})")
        spec = cls(**{**value, "target_modules": tuple(value.get("target_modules", PROJECTIONS))})
        if not isinstance(spec.r, int) or isinstance(spec.r, bool) or spec.r < 1:
            raise AnyGPTError(f"lora.r must be a positive integer, got {spec.r!r}")
        if not isinstance(spec.alpha, (int, float)) or spec.alpha <= 0:
            raise AnyGPTError(f"lora.alpha must be a positive number, got {spec.alpha!r}")
        if not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
            raise AnyGPTError(f"lora.dropout must lie in [0, 1), got {spec.dropout!r}")
        if not spec.target_modules or not all(isinstance(n, str) for n in spec.target_modules):
            raise AnyGPTError(f"lora.target_modules must be a non-empty list of module names, "
                              f"got {value['target_modules']!r}")
        if not isinstance(spec.train_token_rows, bool):
            raise AnyGPTError(f"lora.train_token_rows must be true or false, got {spec.train_token_rows!r}")
        return spec


class TokenRows(nn.Module):
    """An embedding or bias-free output layer whose rows from ``start`` on are a trainable copy (float32).

    Args:
        base: The frozen ``nn.Embedding`` or ``nn.Linear`` (plain or int8 weights).
        start: First trained row.
        tied: The embedding's ``TokenRows`` whose rows an output layer tied to the embedding shares.
    """

    def __init__(self, base: nn.Module, start: int, tied: TokenRows | None = None):
        super().__init__()
        self.base, self.start, self.embedding = base, start, isinstance(base, nn.Embedding)
        self._tied = [tied] if tied is not None else []  # a list: no second registration of the same rows
        if tied is None:
            self.rows = nn.Parameter(_dense(base.weight)[start:].detach().float().clone())

    @property
    def trained_rows(self) -> nn.Parameter:
        """The trained rows (``[vocab - start, hidden]``)."""
        return self._tied[0].rows if self._tied else self.rows

    @property
    def weight(self) -> torch.Tensor:
        """The whole matrix as the layer uses it (frozen rows, then trained rows); differentiable in the rows."""
        frozen = _dense(self.base.weight)
        return torch.cat([frozen[: self.start], self.trained_rows.to(frozen.dtype)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.trained_rows
        if self.embedding:
            out = self.base(x)
            tail = F.embedding((x - self.start).clamp(min=0), rows).to(out.dtype)
            return torch.where((x >= self.start).unsqueeze(-1), tail, out)
        head = F.linear(x, self.base.weight[: self.start])
        return torch.cat([head, F.linear(x, rows.to(x.dtype)).to(head.dtype)], dim=-1)

    def merged(self) -> nn.Module:
        """The base layer with the trained rows written into its weight, in place (an int8 weight is dequantized
        first; a weight tied to the embedding stays tied)."""
        if is_quantized(self.base.weight):
            self.base.weight = nn.Parameter(_dense(self.base.weight), requires_grad=False)
        with torch.no_grad():
            self.base.weight[self.start:] = self.trained_rows.to(self.base.weight.dtype)
        return self.base


def add_lora(backbone: nn.Module, spec: LoraSpec, start: int) -> nn.Module:
    """Freeze ``backbone`` (a transformers causal LM), wrap it in a peft LoRA model and, with
    ``spec.train_token_rows``, make the embedding and output rows from ``start`` on trainable.

    Raises:
        AnyGPTError: A target module the backbone lacks (or another peft refusal), in one line.
    """
    from peft import LoraConfig, get_peft_model

    backbone.requires_grad_(False)
    if spec.train_token_rows:
        embeddings = TokenRows(backbone.get_input_embeddings(), start)
        head = backbone.get_output_embeddings()
        tied = head.weight is embeddings.base.weight
        backbone.set_input_embeddings(embeddings)
        backbone.set_output_embeddings(TokenRows(head, start, tied=embeddings if tied else None))
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # merge_lora dequantizes int8 layers itself: no re-quantizing config needed
            warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            model = get_peft_model(backbone, config)
    except ValueError as err:
        raise AnyGPTError(f"lora: {one_line(err)}") from None
    for module in model.modules():  # peft freezes every parameter that is not an adapter's
        if isinstance(module, TokenRows):
            module.trained_rows.requires_grad_(True)
    return model


def is_lora(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a peft model."""
    return hasattr(backbone, "peft_config") and hasattr(backbone, "get_base_model")


def base_model(backbone: nn.Module) -> nn.Module:
    """The transformers model inside a peft model (the backbone itself otherwise)."""
    return backbone.get_base_model() if is_lora(backbone) else backbone


def merge_lora(backbone: nn.Module) -> nn.Module:
    """Fold the adapters and trained rows of a model from ``add_lora`` into its base weights and return the plain
    transformers model (int8 weights come back dequantized: the merged model is a float model)."""
    from peft.tuners.lora import LoraLayer

    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = _dense(base.weight).detach()
            for name in module.active_adapters:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
            base.weight = nn.Parameter(weight, requires_grad=False)
    model = backbone.unload()
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if is_quantized(param):
                setattr(module, name, nn.Parameter(_dense(param), requires_grad=False))
    for getter, setter in ((model.get_input_embeddings, model.set_input_embeddings),
                           (model.get_output_embeddings, model.set_output_embeddings)):
        if isinstance(getter(), TokenRows):
            setter(getter().merged())
    return model


def drop_frozen(state: dict[str, torch.Tensor], module: nn.Module, prefix: str = "backbone.") -> None:
    """Delete from a checkpoint's ``state`` the tensors under ``prefix`` that ``module`` does not train."""
    trained = {name for name, param in module.named_parameters() if param.requires_grad}
    if not trained & set(state):
        raise AnyGPTError("lora: no trained tensor is in the checkpoint under its own name (wrapped parameters: "
                          "use strategy auto or ddp)")
    for key in [k for k in state if k.startswith(prefix) and k not in trained]:
        del state[key]


def refill_frozen(state: dict[str, torch.Tensor], module: nn.Module, prefix: str = "backbone.") -> None:
    """Put ``module``'s own tensors under ``prefix`` into ``state`` where a checkpoint lacks them."""
    for key, value in module.state_dict().items():
        if key.startswith(prefix):
            state.setdefault(key, value)


def _dense(weight: torch.Tensor) -> torch.Tensor:
    return weight.dequantize().to(weight.dtype) if is_quantized(weight) else weight
