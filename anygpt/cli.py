"""``anygpt {predict,fit,validate} --config configs/X.yaml``: a thin LightningCLI over UnifiedLM.

``anygpt tokenize --config configs/tokenize/X.yaml`` is a second LightningCLI, over ``CorpusTokenizer`` and
``CorpusDataModule``, that runs ``trainer.predict`` to turn a corpus into token shards.

Lightning, torch and the model code are imported only once a subcommand is parsed, so ``anygpt --help`` answers
at once.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from anygpt.cli_classes import model_cli_class, tokenize_cli_class

USAGE = """usage: anygpt [-h] {predict,fit,validate,test,tokenize,chat,evaluate} --config CONFIG.yaml [--key VALUE ...]
       anygpt export --ckpt_path CKPT --output_dir DIR [--max_shard_size 5GB] [--dtype bfloat16]
       anygpt codecs

AnyGPT: one language model that reads and writes text, speech, image and music tokens.

subcommands:
  predict    generate for requests (source|target|content lines); writes media, text and predictions.jsonl
  fit        train or fine-tune the LM on AnyGPT-format JSONL
  validate   report loss and perplexity per task on validation JSONL
  test       as validate, on the test split
  tokenize   encode a corpus (manifest of media + text) into token shards, resumable, on CPU or N GPUs
  chat       talk to the model interactively: type messages, attach image/speech/music files, hear replies
  evaluate   run a pinned evaluation protocol (configs/eval/): generate, score, write summary.json (resumable)
  export     write a fit checkpoint as a Hugging Face folder (config, safetensors, tokenizer)
  codecs     list the installed codecs (entry points "anygpt.codecs"), which configs may name: class_path: speech

examples:
  anygpt predict --config configs/tiny.yaml
  anygpt predict --config configs/base.yaml --data.requests_file my_requests.txt
  anygpt predict --config configs/base.yaml --print_config
  anygpt fit --config tests/configs/fit_tiny.yaml
  anygpt tokenize --config configs/tokenize/speech.yaml --data.manifest my_corpus.jsonl
  anygpt predict --config configs/chat.yaml --data.init_args.conversations_file my_conversations.jsonl
  anygpt chat --config configs/chat.yaml
  anygpt evaluate --config configs/eval/demo_asr.yaml
  anygpt export --ckpt_path runs/last.ckpt --output_dir my-anygpt

Run `anygpt SUBCOMMAND --help` for every option of a subcommand.
"""


def names_other_model(argv: list[str]) -> bool:
    """Whether the ``--config`` files of a command name a model class (``model: {class_path: ...}``) other than
    ``UnifiedLM``; the last config that names one decides."""
    import yaml

    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    named = None
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports it
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            named = str(model["class_path"])
    return named is not None and named.rsplit(".", 1)[-1] != "UnifiedLM"


def __getattr__(name: str):
    if name == "AnyGPTCLI":  # built on first access, so importing this module stays light
        return model_cli_class()
    if name == "AnyModelCLI":  # configs that name their model class (codec and decoder trainers)
        return model_cli_class(True)
    if name == "TokenizeCLI":
        return tokenize_cli_class()
    raise AttributeError(name)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``anygpt`` console script and of ``python -m anygpt``."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    from anygpt.quiet import quiet_third_party

    quiet_third_party()
    # Codecs are frozen in eval mode on purpose; Lightning would warn about them at every fit.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    try:
        if argv[0] == "tokenize":
            # The subcommand is ours, not LightningCLI's; its batches are whole (no batch sampler to track).
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
            warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices")
            tokenize_cli_class()(args=argv[1:])
        elif argv[0] == "chat":
            from anygpt.chat_shell import run_chat

            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
            run_chat(argv[1:])
        elif argv[0] == "codecs":
            from anygpt.tokenizers.registry import describe

            print(describe())
        elif argv[0] == "evaluate":
            from anygpt.evaluation.cli import main as evaluate_main

            evaluate_main(argv[1:])
        elif argv[0] == "export":
            from anygpt.lm.export import main as export_main

            export_main(argv[1:])
        else:
            model_cli_class(names_other_model(argv))(args=args)
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"anygpt: error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error(err: BaseException) -> BaseException | None:
    """The ``AnyGPTError`` behind an exception: jsonargparse wraps what a config's class raises while it is built."""
    from anygpt import AnyGPTError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, AnyGPTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
