"""Replay a network pass from CUDA graphs, one per input shape: the same kernels without the launch overhead.

Iterative decoders (SoundStorm runs 10 passes of a 12-layer Conformer) spend most of their time launching ~700
small kernels per pass from Python. A CUDA graph records those launches once and replays them with one call, so a
pass costs its GPU time only. Replays run the very kernels of the eager pass, so outputs are identical.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class GraphCache:
    """Calls ``fn(*tensors)`` through CUDA graphs captured per (shape, dtype, device) of the inputs.

    ``fn`` must be the same computation on every call (it is only run to capture a new shape); clear the cache when
    the weights it reads are replaced (``module.to(...)``). The returned tensor is the graph's static output: it is
    overwritten by the next call, so use it (or clone it) before calling again. Capturing costs about two eager
    passes, so even a shape used once (10 passes) gains. Copies and pickles of a cache start empty.

    Args:
        max_graphs: Graphs kept (least recently used dropped first); each holds its own activation memory.
    """

    def __init__(self, max_graphs: int = 4):
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, tuple[list[Tensor], Tensor, torch.cuda.CUDAGraph]] = OrderedDict()

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return GraphCache(self.max_graphs)

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "graphs": OrderedDict()}

    def __call__(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        """``fn(*tensors)``, from the graph of these input shapes (captured now if new).

        Args:
            fn: A function of tensors only, returning one tensor, with no host synchronisation inside.
        """
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            self.graphs[key] = self._capture(fn, tensors)
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        inputs, output, graph = self.graphs[key]
        for static, value in zip(inputs, tensors):
            static.copy_(value)
        graph.replay()
        return output

    def clear(self) -> None:
        """Drop every captured graph and its memory."""
        self.graphs.clear()

    def _capture(self, fn: Callable[..., Tensor], tensors: tuple[Tensor, ...]) -> tuple[list[Tensor], Tensor, torch.cuda.CUDAGraph]:
        inputs = [t.clone() for t in tensors]
        graph, output = capture(lambda: fn(*inputs), inputs[0].device)
        return inputs, output, graph


def capture(fn: Callable[[], object], device: torch.device,
            state: Sequence[Tensor] = ()) -> tuple[torch.cuda.CUDAGraph, object]:
    """A CUDA graph of ``fn()`` and the output of the captured call.

    ``fn`` runs once on a side stream first (capture needs lazy initialisation and workspaces done); tensors in
    ``state`` that it updates in place are put back afterwards, so the warm-up leaves no trace.
    """
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
        for tensor, copy in zip(state, saved):
            tensor.copy_(copy)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output
