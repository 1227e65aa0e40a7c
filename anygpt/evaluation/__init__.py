"""``anygpt evaluate``: the paper's evaluations as pinned, rerunnable protocols (``configs/eval/*.yaml``).

``protocol`` reads a protocol, ``samples`` its pinned sample list, ``scorers`` the metrics (maintained libraries),
``runner`` generates, scores and writes ``samples.jsonl``, ``summary.json`` and a table, resuming where a run
stopped.
"""
