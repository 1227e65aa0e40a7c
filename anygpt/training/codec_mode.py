"""The mode of a codec network that a trainer trains inside its frozen inference codec."""

from __future__ import annotations


class TrainsCodecNetwork:
    """Mixin for a LightningModule whose ``self.codec`` is a frozen inference codec (``BaseCodec`` stays in eval
    mode) around the network it trains, ``self.codec.model``: that network follows the trainer's mode. cuDNN's
    LSTM has no backward in eval mode, and Lightning keeps each submodule's mode, so the trainer calls
    ``self.train()`` once it is built."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.codec.model.train(mode)
        return self
