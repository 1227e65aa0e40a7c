"""FSDP2 training: every decoder layer its own shard unit, compiled and recomputed inside it; sharded checkpoints.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` with data parallelism over every process by default (no
tensor parallelism: ``UnifiedLM`` shards with ``fully_shard`` alone). Each rank writes its own shards of the weights
and optimizer state into a checkpoint folder (torch.distributed.checkpoint), in parallel, and such a folder loads on
any number of processes.

``UnifiedLM.configure_model`` calls ``shard_backbone`` under this strategy: per decoder layer, activation
checkpointing (the layer's forward recomputed in the backward pass), ``torch.compile`` and ``fully_shard``, in that
order, so that FSDP's communication hooks stay outside the compiled and recomputed regions; then the embeddings,
final norm and LM head form the root unit. Parameter names do not change, so checkpoints keep the single-device keys.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from anygpt import AnyGPTError


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2, ``fully_shard``) over all processes of all nodes.

    Args:
        save_distributed_checkpoint: Each rank writes its shards into a checkpoint folder (True), or rank 0 gathers
            one full file (False; slow and memory-hungry at 7B).
        reshard_after_forward: Free each layer's gathered weights after its forward pass (True, least memory) or
            keep them for the backward pass (False: no second all-gather, more memory).
        process_group_backend: ``nccl`` on GPUs (default), ``gloo`` on CPUs.
        kwargs: Further ``ModelParallelStrategy`` arguments (``timeout``).
    """

    def __init__(self, save_distributed_checkpoint: bool = True, reshard_after_forward: bool = True,
                 process_group_backend: str | None = None, **kwargs: Any):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, **kwargs)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def checkpoint_layers(layers: nn.ModuleList, every: int) -> int:
    """Recompute the forward pass of every ``every``-th layer (1: all) in the backward pass; returns how many.

    The recomputation wraps the layer's own ``forward`` (an instance attribute), so hooks on the layer (FSDP's
    all-gathers) run once, outside it, and ``torch.compile`` of the layer traces it whole.
    """
    from torch.utils.checkpoint import checkpoint

    count = 0
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = False  # transformers' own recomputation wraps the hooks too: off here
        if index % every == every - 1:
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
            count += 1
    return count


def shard_backbone(backbone: nn.Module, mesh: Any, precision: str, compile: bool, recompute_every: int,
                   reshard_after_forward: bool = True) -> None:
    """Shard a transformers decoder-only backbone in place with ``fully_shard``.

    Args:
        backbone: A ``LlamaForCausalLM``-shaped model (``model.layers``, ``model.embed_tokens``, ``lm_head``).
        mesh: The data-parallel device mesh.
        precision: The Trainer's precision: ``bf16-mixed`` gathers bfloat16 weights and reduces gradients in
            float32 (weights and optimizer state stay float32 in their shards).
        compile: ``torch.compile`` each layer.
        recompute_every: Activation checkpointing policy: 0 none, 1 every layer, k every k-th layer.
        reshard_after_forward: See ``FSDP2Strategy``.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = getattr(getattr(backbone, "model", None), "layers", None)
    if layers is None:
        raise AnyGPTError(f"FSDP2 sharding needs a decoder with model.layers; got {type(backbone).__name__}")
    policy = MixedPrecisionPolicy()
    if precision.startswith("bf16-mixed"):
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if recompute_every:
        checkpoint_layers(layers, recompute_every)
    for index, layer in enumerate(layers):
        if compile:
            layer.compile()
        # the last layer's weights are needed again at once by the backward pass: keep them gathered
        fully_shard(layer, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and index < len(layers) - 1)
    fully_shard(backbone, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
