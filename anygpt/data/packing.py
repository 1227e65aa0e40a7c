"""Packing whole documents into fixed-size blocks with no attention across documents.

A block is a list of documents (token id lists). ``collate_packed`` lays them end to end and restarts the position
ids at 0 for each document: given ``position_ids`` and no ``attention_mask``, transformers' LLaMA builds a
block-diagonal causal mask (SDPA/eager) or a flex block mask, and ``attn_implementation: packed`` runs varlen
kernels on the batch's ``cu_seq_lens``, so each document attends only to itself, exactly as if it ran alone. The
first token of each document gets no label: it would be predicted from the previous document.
"""

from __future__ import annotations

import torch


def pack_greedy(lengths: list[int], block_size: int) -> list[list[int]]:
    """Indices of documents grouped into blocks of at most ``block_size`` tokens, in order, never split.

    A document longer than ``block_size`` gets a block of its own (callers cut documents to ``block_size``).
    """
    blocks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, length in enumerate(lengths):
        if current and used + length > block_size:
            blocks.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        blocks.append(current)
    return blocks


def cu_seq_lens(lengths: list[list[int]], width: int) -> tuple[torch.Tensor, int]:
    """Document boundaries over the flattened rows, and the longest document.

    Args:
        lengths: Per row, the lengths of its documents in order; the rest of the row up to ``width`` is padding,
            counted as one more document.
        width: The row length ``T``.
    """
    bounds, longest, start = [0], 1, 0
    for row in lengths:
        for n in [*row, width - sum(row)]:
            if n > 0:
                start += n
                bounds.append(start)
                longest = max(longest, n)
    return torch.tensor(bounds, dtype=torch.int32), longest


def collate_packed(blocks: list[list[tuple[list[int], str]]], task_names: list[str], pad_id: int = 0) -> dict:
    """A batch of packed blocks: documents end to end, positions restarting per document.

    Args:
        blocks: Per row, its documents as ``(ids, task)`` (every token but the first is a label) or ``(ids, labels,
            task)`` (labels aligned with ids, -100 where no loss is taken: a conversation's non-assistant turns).
        task_names: Every task name; ``token_task`` holds indices into it (-1 on padding).
        pad_id: Id of the padding that right-fills shorter rows (a document of its own, with no labels).

    Returns:
        ``input_ids``, ``position_ids``, ``labels`` (-100 on padding and on each document's first token),
        ``token_task`` [B, T], ``task_names``, and for the varlen kernels ``cu_seq_lens`` (document boundaries over
        the flattened rows) and ``max_length`` (the longest document); no ``attention_mask`` (the positions define
        the documents).
    """

    width = max(sum(len(doc[0]) for doc in block) for block in blocks)
    shape = (len(blocks), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    token_task = torch.full(shape, -1, dtype=torch.long)
    index = {name: i for i, name in enumerate(task_names)}
    for row, block in enumerate(blocks):
        start = 0
        for doc in block:
            ids, task = doc[0], doc[-1]
            end = start + len(ids)
            input_ids[row, start:end] = torch.as_tensor(ids)
            position_ids[row, start:end] = torch.arange(len(ids))
            own = torch.as_tensor(doc[1]) if len(doc) == 3 else input_ids[row, start:end]
            labels[row, start + 1:end] = own[1:]
            token_task[row, start:end] = index[task]
            start = end
        position_ids[row, start:] = torch.arange(width - start)  # the padding: one more document
    bounds, longest = cu_seq_lens([[len(doc[0]) for doc in block] for block in blocks], width)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "token_task": token_task,
            "task_names": list(task_names), "cu_seq_lens": bounds, "max_length": longest}
