"""The demo LM's text tokenizer: SentencePiece BPE with LLaMA-2's settings, trained on the demo world's language.

Its text is the grammar's sentences, the captions of scenes and melodies, the questions and answers of the demo's
conversations, and the built-in instruction pools, so the demo's prompts and answers take few tokens; byte
fallback keeps any other text encodable. Deterministic: one thread, no sampling of the input.

    python -m anygpt.demo.text_tokenizer runs/demo/tokenizer
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from anygpt.demo.grammar import sentences, vocabulary
from anygpt.lm.prompts import InstructionPools
from anygpt.lm.tokenizer import TextTokenizer

# 680 distinct words; 1280 pieces cut a line into 10.5 tokens (1536: 10.2, 1024: 11.4) and keep the weights
# within the 30 MB budget
VOCAB_SIZE = 1280


def training_text(seed: int = 0, count: int = 20000) -> list[str]:
    """Grammar sentences, every grammar word once, scene and melody captions and conversation turns (training
    splits), and every built-in instruction (repeated: prompts carry one)."""
    from anygpt.demo.conversations import plan as conversation_plan
    from anygpt.demo.melodies import plan as melody_plan
    from anygpt.demo.scenes import plan as scene_plan

    pools = InstructionPools().pools
    instructions = [line for direction in pools.values() for pool in direction.values() for line in pool]
    captions = [r["text"] for r in scene_plan(seed, {"train": count // 4})["train"]]
    captions += [r["text"] for r in melody_plan(seed, {"train": count // 4})["train"]]
    turns = [t for r in conversation_plan(seed, "train", count // 4) for t in (r["question"], r["answer"])]
    return sentences(seed, count) + sorted(vocabulary()) + captions + turns + instructions * 100


def train_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> TextTokenizer:
    """A BPE ``TextTokenizer`` for the demo world (no added tokens: the LM adds its codec blocks itself)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text(seed)), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        shuffle_input_sentence=False, input_sentence_size=0, num_threads=1, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, minloglevel=2)
    return TextTokenizer(model.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo LM's text tokenizer and save it as a folder.")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    folder = train_tokenizer(args.seed, args.vocab_size).save_pretrained(Path(args.folder))
    print(folder)


if __name__ == "__main__":
    main()
