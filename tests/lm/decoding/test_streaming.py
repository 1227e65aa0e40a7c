"""Token streams: ``generate_stream`` yields ids as they are generated, and joined they are ``generate``'s ids."""

from __future__ import annotations

import pytest

from .test_fast_decode import tiny_setup

PROMPTS = [[1, 5, 9, 33], [1, 8], [1, 40, 41, 42]]
SPEC = [("image", 40), ("speech", 30), ("text", 12)]


def joined(chunks: list[list[list[int]]], rows: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(rows)]
    for chunk in chunks:
        assert len(chunk) == rows
        for row, ids in zip(out, chunk):
            row.extend(ids)
    return out


@pytest.mark.parametrize(("fast", "sample"), [(False, True), (True, False)])
def test_streamed_ids_join_to_the_whole_generation(fast, sample):
    from anygpt.lm.decoding.loop import generate, generate_stream

    model, _, rows = tiny_setup(layers=2, seed=4)
    seeds = [3, 4, 5]
    whole = generate(model, PROMPTS, *rows(SPEC, sample), seeds, fast=fast)
    chunks = list(generate_stream(model, PROMPTS, *rows(SPEC, sample), seeds, fast=fast))
    assert joined(chunks, len(PROMPTS)) == whole
    assert len(whole[0]) > 20  # the image row: its 32 codes and tags, so the stream had steps to show
    sizes = [len(chunk[0]) for chunk in chunks if chunk[0]]
    assert len(sizes) >= 3 and max(sizes) <= (8 if fast else 1)  # arrived in pieces, not all at the end


def test_the_first_ids_come_before_the_generation_ends():
    from anygpt.lm.decoding.loop import generate_stream

    model, _, rows = tiny_setup(layers=1, seed=5)
    steps = generate_stream(model, PROMPTS[:1], *rows(SPEC[:1]), [0], fast=False)
    first = next(steps)
    assert len(first[0]) == 1  # one step generated, the other 30-odd not yet
    assert sum(len(chunk[0]) for chunk in steps) > 20

