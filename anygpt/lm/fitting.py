"""The fit side of ``UnifiedLM``: losses, training and validation steps, sharding, optimizers, checkpoint hooks.

``FitHooks`` is a mixin of ``UnifiedLM`` (``anygpt.lm.unified``): it reads the model's ``backbone``, ``lora``,
``compile_training``, ``recompute_every``, ``quantized``, ``seed``, ``codec_modules``, ``metrics`` and optimizer
factories. A training step's loss is the mean over every label token of the whole step, on any number of
processes; random draws depend on the step and rank alone; so a resumed fit repeats the uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anygpt import AnyGPTError
from anygpt.lm.lora import base_model, drop_frozen, merge_lora, refill_frozen


class FitHooks:
    """Lightning's fit hooks of ``UnifiedLM`` (a mixin; see the module's docstring)."""

    def _token_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token losses ``[B, T-1]`` and where they count. Packed batches carry ``position_ids`` (restarting per
        document) and no ``attention_mask``: the backbone then keeps documents apart."""
        if "position_ids" in batch:
            inputs = {"position_ids": batch["position_ids"]}
            if "cu_seq_lens" in batch and self.backbone.config._attn_implementation == "packed":
                inputs.update(cu_seq_lens_q=batch["cu_seq_lens"], cu_seq_lens_k=batch["cu_seq_lens"],
                              max_length_q=batch["max_length"], max_length_k=batch["max_length"])
        else:
            inputs = {"attention_mask": batch["attention_mask"]}
        logits = self.backbone(input_ids=batch["input_ids"], use_cache=False, **inputs).logits
        labels = batch["labels"][:, 1:]
        return self._loss_fn(logits, batch["labels"])[:, :-1], labels != -100

    def configure_model(self) -> None:
        """Under ``FSDP2Strategy`` (a device mesh is set): shard the backbone layer by layer with FSDP2, each layer
        recomputed and compiled as configured (``anygpt.lm.sharding``). Other strategies: nothing to do."""
        if self.device_mesh is None or getattr(self, "_sharded", False):
            return
        if self.lora:
            raise AnyGPTError("lora fits run on one device with strategy: auto; FSDP2Strategy shards full fits only")
        from anygpt.lm.sharding import shard_backbone

        strategy = self.trainer.strategy
        shard_backbone(self.backbone, self.device_mesh["data_parallel"], str(self.trainer.precision),
                       compile=self.compile_training, recompute_every=self.recompute_every,
                       reshard_after_forward=getattr(strategy, "reshard_after_forward", True))
        self._sharded = True
        if self.compile_training:
            self._loss_fn = torch.compile(token_cross_entropy)

    def on_fit_start(self) -> None:
        if not self.compile_training or self._loss_fn is not token_cross_entropy:
            return
        for layer in base_model(self.backbone).model.layers:
            getattr(layer, "module", layer).compile()  # the layer inside an FSDP wrapper
        self._loss_fn = torch.compile(token_cross_entropy)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Random draws (dropout) depend on the step and rank alone, so a resumed run draws what the whole run would.
        torch.manual_seed(self.seed + 1_000_003 * (self.global_step + 1) + 7919 * self.global_rank)
        # Lightning counts the last step twice when it resumes from a checkpoint written at an epoch's end, and
        # would log every later step one ahead; with one optimizer the count is the global step.
        loop = self.trainer.fit_loop.epoch_loop
        loop._batches_that_stepped = self.trainer.global_step

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, valid = self._token_losses(batch)
        total, count = losses.sum(), valid.sum()
        step_total, step_count = total.detach().clone(), count.clone()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:  # the mean over the whole step's tokens, however the step's items are split over processes
            reduced = self.trainer.strategy.reduce(torch.stack([step_total.float(), step_count.float()]),
                                                   reduce_op="sum")
            step_total, step_count = reduced[0], reduced[1]
        # Data-parallel strategies average the processes' gradients: scale by the world size to get the step mean.
        loss = total * world / step_count.clamp(min=1)
        self.log("train/loss", step_total / step_count.clamp(min=1), prog_bar=True,
                 batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        from torchmetrics.aggregation import MeanMetric

        losses, valid = self._token_losses(batch)
        if "token_task" in batch:  # packed: the task of each predicted token
            names, token_task = batch["task_names"], batch["token_task"][:, 1:]
        else:  # one task per row
            names = sorted(set(batch["task"]))
            rows = torch.tensor([names.index(t) for t in batch["task"]], device=losses.device)
            token_task = rows.unsqueeze(1).expand_as(losses)
        for index, name in [(None, "all"), *enumerate(names)]:
            keep = valid if index is None else valid & (token_task == index)
            count = keep.sum()
            if count == 0:
                continue
            if name not in self.metrics:
                self.metrics[name] = MeanMetric().to(self.device)
            self.metrics[name].update(losses[keep].mean(), weight=count)

    def on_validation_epoch_end(self) -> None:
        import warnings

        from torchmetrics.aggregation import MeanMetric

        # Every rank computes the same metrics in the same order (compute() is a collective): a task that one
        # rank's validation blocks lacked still joins the others' reduction, with no tokens.
        names = sorted(name for name, metric in self.metrics.items() if metric.update_count)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        for name in names:
            if name not in self.metrics:
                self.metrics[name] = MeanMetric().to(self.device)
            metric = self.metrics[name]
            with warnings.catch_warnings():  # "compute before update" on a rank without this task
                warnings.simplefilter("ignore", UserWarning)
                loss = metric.compute()
            suffix = "" if name == "all" else f"/{name}"
            self.log(f"val/loss{suffix}", loss, prog_bar=name == "all")
            self.log(f"val/ppl{suffix}", torch.exp(loss.clamp(max=50)))
            metric.reset()

    def configure_optimizers(self):
        if self.quantized and not self.lora:
            raise AnyGPTError(f"quantize: {self.quantized} weights are for predict and chat, or a fit with lora (QLoRA); "
                              "a full fit needs quantize: null")
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # Codecs are frozen and loaded from their own weights: checkpoints hold the backbone only.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        if getattr(self, "_sharded", False):
            return  # a sharded checkpoint loads in place, every key included
        for key in [k for k in state if k.startswith("codec_modules.")]:
            del state[key]
        if self.lora:  # the adapters and trained token rows only
            drop_frozen(state, self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.codec_modules.state_dict().items():
            state.setdefault(f"codec_modules.{key}", value)
        own = self.state_dict()
        for key, value in state.items():
            if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
                raise AnyGPTError(f"the checkpoint does not fit the model: {key} is {tuple(value.shape)} in the "
                                  f"checkpoint but {tuple(own[key].shape)} in the model (another model shape?)")
        if self.lora:
            refill_frozen(state, self)

    def merge_adapters(self) -> None:
        """Fold the LoRA adapters and trained token rows into the base weights, in place: ``self.backbone`` becomes
        the plain transformers model (int8 weights come back dequantized), as if built without ``lora``."""
        if self.lora:
            self.backbone = merge_lora(self.backbone).requires_grad_(True)
            self.lora, self.quantized = None, None


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token losses ``[B, T]`` in float32 (the last column is 0: it has no next token)."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
    return losses.view_as(targets)
