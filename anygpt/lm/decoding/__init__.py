"""The decoding room: ``presets`` (sampling settings per target), ``grammar`` (what a request may generate next),
``loop`` (the plain batched decode loop, the reference), ``fast`` (static KV cache and CUDA-graph steps on the GPU)
with its ``kernels``, ``gpu_grammar`` and ``gpu_sampling``, and ``quantize`` (int8 weights)."""
