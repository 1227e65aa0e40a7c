"""A model defined outside the package, for `anygpt fit` configs that name their own LightningModule."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule


class ToyGain(LightningModule):
    """Learns one gain ``w`` so that ``w * audio`` matches ``target * audio``.

    Args:
        target: The gain to learn.
        lr: SGD learning rate.
    """

    def __init__(self, target: float = 0.5, lr: float = 5.0):
        super().__init__()
        self.target, self.lr = target, lr
        self.gain = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        audio = batch["audio"][batch["mask"]]
        loss = ((self.gain - self.target) * audio).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
