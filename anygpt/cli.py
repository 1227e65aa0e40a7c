"""``anygpt {predict,fit,validate} --config configs/X.yaml``: a thin LightningCLI over UnifiedLM.

Lightning, torch and the model code are imported only once a subcommand is parsed, so ``anygpt --help`` answers
at once.
"""

from __future__ import annotations

import functools
import sys
import warnings

USAGE = """usage: anygpt [-h] {predict,fit,validate,test} --config CONFIG.yaml [--section.key VALUE ...]

AnyGPT: one language model that reads and writes text, speech, image and music tokens.

subcommands:
  predict    generate for requests (source|target|content lines); writes media, text and predictions.jsonl
  fit        train or fine-tune the LM on AnyGPT-format JSONL
  validate   report loss and perplexity per task on validation JSONL
  test       as validate, on the test split

examples:
  anygpt predict --config configs/tiny.yaml
  anygpt predict --config configs/base.yaml --data.requests_file my_requests.txt
  anygpt predict --config configs/base.yaml --print_config
  anygpt fit --config tests/configs/fit_tiny.yaml

Run `anygpt SUBCOMMAND --help` for every option of a subcommand.
"""


@functools.cache
def _cli_class():
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from anygpt.lm.unified import UnifiedLM

    class RunConfigCallback(SaveConfigCallback):
        """Saves the run's config into the logger's versioned run folder; without a logger there is no such
        folder (Lightning would write ``config.yaml`` into the working directory), so nothing is written."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            if trainer.logger is not None:
                super().setup(trainer, pl_module, stage)

    class AnyGPTCLI(LightningCLI):
        """LightningCLI over ``UnifiedLM`` and any LightningDataModule (requests or training data)."""

        def __init__(self, args=None, **kwargs):
            super().__init__(
                UnifiedLM,
                LightningDataModule,
                subclass_mode_data=True,
                auto_configure_optimizers=False,
                save_config_callback=RunConfigCallback,
                save_config_kwargs={"overwrite": True},
                args=args,
                **kwargs,
            )

    return AnyGPTCLI


def __getattr__(name: str):
    if name == "AnyGPTCLI":  # built on first access, so importing this module stays light
        return _cli_class()
    raise AttributeError(name)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``anygpt`` console script and of ``python -m anygpt``."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    from anygpt import AnyGPTError

    # Codecs are frozen in eval mode on purpose; Lightning would warn about them at every fit.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    try:
        _cli_class()(args=args)
    except AnyGPTError as err:
        print(f"anygpt: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
