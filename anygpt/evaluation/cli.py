"""``anygpt evaluate --config configs/eval/<task>.yaml [--key value ...] [--print_config]``."""

from __future__ import annotations

from anygpt.evaluation.protocol import EvalProtocol


def main(argv: list[str] | None = None) -> dict | None:
    """Parse a protocol (YAML, dotted overrides), run it, print its table; returns the summary."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="anygpt evaluate", description="Run a pinned evaluation protocol: generate for "
                            "every sample, score, write samples.jsonl, summary.json and table.md (resumable).")
    parser.add_argument("--config", action=ActionConfigFile, help="a protocol, e.g. configs/eval/demo_asr.yaml")
    parser.add_class_arguments(EvalProtocol, as_group=False)
    args = parser.parse_args(argv)
    protocol = parser.instantiate_classes(args)
    protocol = EvalProtocol(**{k: v for k, v in protocol.items() if k != "config"})
    from anygpt.evaluation.runner import evaluate, table

    summary = evaluate(protocol)
    print(table(summary))
    print(f"wrote {protocol.output_dir}/summary.json, samples.jsonl, table.md")
    return summary
