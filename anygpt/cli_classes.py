"""The LightningCLI classes behind ``anygpt``: over ``UnifiedLM`` (or any LightningModule a config names) and the
``tokenize`` run. Built on first use, so that importing this module stays light; ``anygpt.cli`` parses commands
with them, and the chat shell and ``anygpt.demo.session`` build models from predict configs with them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path


@functools.cache
def model_cli_class(any_model: bool = False):
    """The CLI over ``UnifiedLM`` (a config's ``model:`` holds its arguments), or with ``any_model`` over any
    LightningModule that the config names (``model: {class_path, init_args}``: the codec trainers)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from anygpt import AnyGPTError
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
                LightningModule if any_model else UnifiedLM,
                LightningDataModule,
                subclass_mode_model=any_model,
                subclass_mode_data=True,
                auto_configure_optimizers=False,
                save_config_callback=RunConfigCallback,
                save_config_kwargs={"overwrite": True},
                args=args,
                **kwargs,
            )

        def _run_subcommand(self, subcommand: str) -> None:
            ckpt = self.config_init[subcommand].get("ckpt_path")
            if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not Path(ckpt).exists():
                raise AnyGPTError(f"--ckpt_path {ckpt}: no such checkpoint file or folder")
            if ckpt and Path(ckpt).is_dir():
                from anygpt.lm.checkpoints import check_sharded_folder

                check_sharded_folder(Path(ckpt))
            super()._run_subcommand(subcommand)

    return AnyGPTCLI


@functools.cache
def tokenize_cli_class():
    from lightning.pytorch.cli import LightningCLI

    from anygpt.data.corpus import CorpusDataModule, CorpusTokenizer, ShardWriterCallback

    class TokenizeCLI(LightningCLI):
        """``anygpt tokenize``: a corpus manifest to token shards with ``trainer.predict``.

        The shard writer is configured under ``writer`` (``--writer.format jsonl``); its folder is
        ``data.output_dir``. No subcommand: the arguments are those of the run itself.
        """

        def __init__(self, args=None, run: bool = True, **kwargs):
            kwargs.setdefault("trainer_defaults", {"logger": False, "use_distributed_sampler": False,
                                                   "enable_checkpointing": False})
            super().__init__(
                CorpusTokenizer,
                CorpusDataModule,
                save_config_callback=None,
                seed_everything_default=False,
                auto_configure_optimizers=False,
                parser_kwargs={"prog": "anygpt tokenize", "description": "Encode a corpus into token shards."},
                run=False,
                args=args,
                **kwargs,
            )
            if run:
                self.trainer.predict(self.model, datamodule=self.datamodule, return_predictions=False)

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ShardWriterCallback, "writer")
            parser.link_arguments("data.output_dir", "writer.output_dir")

    return TokenizeCLI


@functools.cache
def predict_model_cli_class():
    """The model CLI for building a model from a predict config without running it (``run=False``): it also
    accepts predict-only keys such as ``return_predictions``, which it ignores."""
    class PredictModelCLI(model_cli_class()):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--return_predictions", default=None, help="(a predict option; unused here)")

    return PredictModelCLI


def load_predict_model(config: str | Path, overrides: Sequence[str] = (), root: str | Path | None = None):
    """The model of a predict config, built and in eval mode, without running anything (no trainer, no writer).

    Args:
        config: A predict config (``anygpt predict --config``).
        overrides: Further command-line style arguments, e.g. ``["--model.backbone", "runs/demo/lm_export"]``.
        root: Folder the config's relative paths are taken from (None: the current one).
    """
    import os

    here = os.getcwd()
    if root is not None:
        os.chdir(root)
    try:
        cli = predict_model_cli_class()(args=["--config", str(config), "--trainer.logger", "false",
                                              "--trainer.callbacks", "[]", *overrides], run=False)
    finally:
        os.chdir(here)
    return cli.model.eval()
