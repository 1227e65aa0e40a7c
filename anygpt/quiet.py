"""Quiet runs: third-party notices that a user of ``anygpt`` cannot act on, dropped where they come from.

Each filter names the logger (or warning text) of one notice; every other message of those libraries still shows,
and real warnings stay. ``anygpt.cli.main`` installs them before the heavy imports.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

#: Logger name -> fragments of the notices to drop from it.
NOTICES: dict[str, tuple[str, ...]] = {
    # Lightning's advertisements for its cloud products, at every fit and predict
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless",),
    # torchao registering its enums with torch's pytree at import (torch deprecates the call, not our use)
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
    # diffusers probing torchao's tensor types for checkpoints that this package never loads
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    # transformers' image processors fall back to their PIL backend without torchvision, as intended here
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
}
#: Warning texts (regular expressions) raised inside third-party code about its own use of deprecated APIs.
WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class DropNotices(logging.Filter):
    """Drops the records whose message holds one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for name, fragments in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotices) for f in logger.filters):
            logger.addFilter(DropNotices(fragments))
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def no_loading_bars():
    """diffusers' and transformers' progress bars off while a pipeline loads from a folder ("Loading pipeline
    components", "Loading weights": one bar a component, nothing a user can act on), as they were afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()
