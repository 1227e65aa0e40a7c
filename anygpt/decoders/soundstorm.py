"""SoundStorm: fills SpeechTokenizer's acoustic RVQ levels 2-8 from its semantic level 1 (AnyGPT's speech back end).

A re-implementation of the Conformer MaskGIT that AnyGPT vendors in ``soundstorm_speechtokenizer/soundstorm.py``:
the module tree gives the released checkpoint's parameter names, and ``generate`` follows the original decoding
loop step for step, including its quirks (see ``SoundStormDecoder.generate``).

Layout of one pass: the 7 acoustic ids of a frame are embedded (one table, rows ``level * (C + 1) + id``, id C is
MASK) and summed, the semantic embedding is added, a Conformer runs over the frames, and each frame is split into
7 level vectors that get their own output projection: logits ``[B, N, 7, C]``.
"""

from __future__ import annotations

import json

import math

import torch
from torch import Tensor, nn

from anygpt import AnyGPTError
from anygpt.decoders.conformer import ChanLayerNorm, SoundStormNetwork
from anygpt.cuda_graphs import GraphCache

CHECKPOINT = "fnlp/AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt"
TOP_K_THRESHOLD = 0.7  # the original's topk_pres: sampling keeps the ceil((1 - 0.7) * C) largest logits


class SoundStormDecoder(nn.Module):
    """SoundStorm as AnyGPT uses it: predicts SpeechTokenizer RVQ levels 2-8 from the RVQ-1 (semantic) ids.

    The defaults build AnyGPT's full-size model (351.38 M parameters); ``from_pretrained`` loads the released
    ``speechtokenizer_soundstorm_mls.pt``, ``tiny`` builds a small random one for tests.

    Args:
        dim: Conformer width.
        depth: Number of Conformer blocks.
        heads: Attention heads.
        dim_head: Width of one attention head (rotary embedding over all of it).
        ff_mult: Feed-forward expansion factor.
        conv_kernel_size: Kernel of the depthwise convolution.
        conv_expansion_factor: Channel expansion inside the convolution module.
        codebook_size: Codes per acoustic level; the id ``codebook_size`` is MASK.
        num_quantizers: Acoustic levels predicted (RVQ 2-8).
        num_semantic_tokens: Semantic (RVQ-1) vocabulary size.
        cuda_graphs: On CUDA, replay each network pass of ``generate`` from a CUDA graph captured per length
            (same kernels, same outputs, without the launch overhead that dominates eager passes).
    """

    def __init__(self, dim: int = 1024, depth: int = 12, heads: int = 8, dim_head: int = 128, ff_mult: int = 4,
                 conv_kernel_size: int = 31, conv_expansion_factor: int = 2, codebook_size: int = 1024,
                 num_quantizers: int = 7, num_semantic_tokens: int = 1024, cuda_graphs: bool = True):
        super().__init__()
        self.num_semantic_tokens = num_semantic_tokens
        self.net = SoundStormNetwork(dim, depth, heads, dim_head, ff_mult, conv_kernel_size, conv_expansion_factor,
                                     codebook_size, num_quantizers)
        self.semantic_token_emb = nn.Embedding(num_semantic_tokens, dim)
        self.cuda_graphs = cuda_graphs
        self._graphs = GraphCache()

    def _apply(self, fn, recurse: bool = True):
        self._graphs.clear()  # .to() / .cuda() / .half() replace the weights the graphs read
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; captured CUDA graphs are dropped (``assign`` replaces the weights)."""
        self._graphs.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def codebook_size(self) -> int:
        return self.net.codebook_size

    @property
    def num_quantizers(self) -> int:
        return self.net.num_quantizers

    @property
    def mask_id(self) -> int:
        return self.net.codebook_size

    @property
    def device(self) -> torch.device:
        return self.semantic_token_emb.weight.device

    @classmethod
    def tiny(cls, seed: int = 0, **overrides) -> SoundStormDecoder:
        """Small model with seeded random weights (norm gains near 1), in eval mode; the global RNG is untouched."""
        config = dict(dim=64, depth=2, heads=2, dim_head=32, conv_kernel_size=7, codebook_size=1024,
                      num_semantic_tokens=1024)
        config.update(overrides)
        with torch.random.fork_rng(devices=[]):
            model = cls(**config)
        gains = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
        gains |= {id(m.gamma) for m in model.modules() if isinstance(m, ChanLayerNorm)}
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                r = torch.randn(p.shape, generator=generator) * 0.1
                p.copy_(1 + r if id(p) in gains else r)
        return model.eval()

    @classmethod
    def from_pretrained(cls, checkpoint: str = CHECKPOINT, **config) -> SoundStormDecoder:
        """Load a checkpoint (a plain state dict, a ``.safetensors`` file, a dict with a ``"model"`` entry, or an
        ``anygpt fit`` checkpoint of ``SoundStormTrainer``, with its saved config) strictly, in eval mode.

        Args:
            checkpoint: Local file, URL or ``<owner>/<repo>/<file>`` on the Hugging Face Hub.
            **config: Constructor arguments; those not given are read from the tensor shapes. Only the product
                ``heads * dim_head`` is in the weights: unless told, dim_head is 128 (AnyGPT) where it divides
                that width, else 32 (as ``tiny``).

        Raises:
            AnyGPTError: The file is missing, unreadable, or does not fit the model (one line).
        """
        from anygpt.hub import read_state, resolve_file

        path = resolve_file(checkpoint)
        try:
            state = read_state(path)
        except Exception as err:
            raise AnyGPTError(f"cannot read the SoundStorm checkpoint {path}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
        if path.suffix == ".safetensors":  # the trainer's config travels in the file's metadata
            from safetensors import safe_open

            with safe_open(path, "pt") as file:
                config = {**json.loads((file.metadata() or {}).get("soundstorm_config", "{}")), **config}
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # `anygpt fit`'s SoundStormTrainer
            config = {**state.get("soundstorm_config", {}), **config}
            state = {k[8:]: v for k, v in state["state_dict"].items() if k.startswith("decoder.")}
        if not isinstance(state, dict):
            raise AnyGPTError(f"the SoundStorm checkpoint {path} holds a {type(state).__name__}, not a state dict")
        with torch.device("meta"):  # no random init of 351 M parameters that the checkpoint overwrites
            model = cls(**{**_config_from_shapes(state, config), **config})
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise AnyGPTError(f"the SoundStorm checkpoint {path} does not fit the model: "
                              f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:  # shape mismatches
            reason = " ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err)
            raise AnyGPTError(f"the SoundStorm checkpoint {path} does not fit the model: {reason}") from err
        model.net.quantizer_offsets = model.net.make_offsets()
        model.net.conformer.rotary_emb.inv_freq = model.net.conformer.rotary_emb.make_inv_freq()
        return model.eval()

    def logits(self, semantic_tokens: Tensor, acoustic_tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Raw logits ``[B, N, Q, C]`` of one network pass.

        Args:
            semantic_tokens: ``[B, N]`` ids in ``[0, num_semantic_tokens)``.
            acoustic_tokens: ``[B, N, Q]`` ids in ``[0, C]``, C = MASK.
            mask: ``[B, N]`` bool, False for padding frames (dropped as attention keys, zeroed around the
                depthwise conv; their rows are still returned); None means all True.
        """
        semantic = self._ids("semantic_tokens", semantic_tokens, "[batch, frames]", self.num_semantic_tokens)
        acoustic = self._ids("acoustic_tokens", acoustic_tokens, "[batch, frames, levels]", self.mask_id + 1)
        b, n = semantic.shape
        if acoustic.shape != (b, n, self.num_quantizers):
            raise ValueError(f"acoustic_tokens must have shape {(b, n, self.num_quantizers)}, "
                             f"got {tuple(acoustic.shape)}")
        if mask is not None:
            if mask.shape != (b, n) or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor of shape {(b, n)}, got {mask.dtype} "
                                 f"{tuple(mask.shape)}")
            mask = mask.to(self.device)
        return self.net(acoustic.reshape(b, n * self.num_quantizers), self.semantic_token_emb(semantic), mask)

    @torch.inference_mode()
    def generate(self, semantic_tokens: Tensor, prompt_tokens: Tensor | None = None, steps: int = 3,
                 greedy: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """All RVQ levels ``[B, N, 1 + Q]`` (column 0 = ``semantic_tokens``) by the original's MaskGIT loop.

        Level 0 gets ``steps + 1`` passes. Pass i re-masks ``floor(cos(pi/2 * i/steps) * (P + N))`` entries; where
        that count is nonzero it samples every masked entry (all levels) with Gumbel noise at temperature
        ``i / steps`` over the top 30 % of the logits, ranks ``1 - p(sampled id)`` over ALL ``(P + N) * Q``
        entries (already fixed ones and prompt frames included, so fixed tokens can be re-masked), masks the
        top ranks and every level above 0, and unmasks prompt frames. A pass with count 0 takes the argmax into
        every masked entry, levels above 0 included. Levels 1..Q-1 then get one argmax pass each, which
        overwrites levels q..Q-1 of every frame, prompt frames included.

        Random numbers: one ``uniform_(0, 1)`` of a float32 tensor ``[B, (P + N) * Q, C]`` per sampling pass
        (the one at temperature 0 too), from ``generator`` or else the global RNG of the logits' device, so
        ``torch.manual_seed(s)`` reproduces the original exactly.

        Args:
            semantic_tokens: ``[B, N]`` semantic ids in ``[0, num_semantic_tokens)``.
            prompt_tokens: Voice prompt ``[B, P, 1 + Q]`` (column 0 semantic ids, then acoustic ids in
                ``[0, C)``), or None. Its frames condition the passes and are dropped from the output.
            steps: Level-0 sampling steps (AnyGPT used 3): ``steps + Q`` network passes in all.
            greedy: True (AnyGPT's setting) as described. False is the original's non-greedy mode: every pass
                samples over the top-k, so the last level-0 pass samples at temperature 1 and the passes of
                levels 1..Q-1 draw noise at temperature 0 (an argmax over the top-k, ties aside).
            generator: Source of the Gumbel noise; None uses the global RNG.

        Raises:
            ValueError: Empty input, ids out of range, wrong shapes, or steps < 1.
        """
        semantic = self._ids("semantic_tokens", semantic_tokens, "[batch, frames]", self.num_semantic_tokens)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        b, n = semantic.shape
        q_levels, device = self.num_quantizers, self.device
        acoustic = torch.full((b, n, q_levels), self.mask_id, dtype=torch.long, device=device)
        cond_ids, p = semantic, 0
        if prompt_tokens is not None:
            prompt = self._prompt(prompt_tokens, b)
            p = prompt.shape[1]
            cond_ids = torch.cat((prompt[:, :, 0], semantic), dim=1)
            acoustic = torch.cat((prompt[:, :, 1:], acoustic), dim=1)
        t = p + n
        target = torch.zeros(b, t, q_levels, dtype=torch.bool, device=device)
        target[:, p:] = True  # the prompt is never masked
        masked = target.clone()
        cond = self.semantic_token_emb(cond_ids)
        graphed = self.cuda_graphs and cond.is_cuda
        rotary = None if graphed else self.net.conformer.rotary_emb(t)
        times = torch.linspace(0.0, 1.0, steps + 1)
        counts = (torch.cos(times * math.pi / 2) * t).long().tolist()

        def run() -> Tensor:  # one network pass: float32 logits [B, T*Q, C], row t*Q + q
            ids = acoustic.view(b, t * q_levels)
            logits = self._graphs(self.net, ids, cond) if graphed else self.net(ids, cond, rotary=rotary)
            return logits.reshape(b, t * q_levels, -1).float()  # a graph's output: used before the next pass

        for i, count in enumerate(counts):  # level 0
            logits = run()
            if greedy and count == 0:
                ids = logits.argmax(dim=-1)
            else:
                logits = _top_k(logits, TOP_K_THRESHOLD)
                ids = _gumbel_sample(logits, i / steps, generator)
            acoustic = torch.where(masked, ids.view(b, t, q_levels), acoustic)
            if count == 0:
                continue
            scores = 1 - logits.softmax(dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
            masked = (rank < count).view(b, t, q_levels)
            masked[:, :, 1:] = True
            masked &= target
            acoustic = acoustic.masked_fill(masked, self.mask_id)
        for q in range(1, q_levels):
            logits = run()
            if greedy:
                ids = logits.argmax(dim=-1)
            else:
                ids = _gumbel_sample(_top_k(logits, TOP_K_THRESHOLD), 0.0, generator)
            acoustic[:, :, q:] = ids.view(b, t, q_levels)[:, :, q:]
        return torch.cat((semantic.unsqueeze(-1), acoustic[:, p:]), dim=-1)

    def _ids(self, name: str, value, shape: str, high: int) -> Tensor:
        """Check an id tensor (rank, dtype, range; on its own device) and move it to the model's device as long."""
        ids = torch.as_tensor(value)
        if ids.dim() != shape.count(",") + 1:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
        if ids.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): nothing to decode")
        bad = (ids < 0) | (ids >= high)
        if bad.any():
            raise ValueError(f"{name} holds id {ids[bad][0].item()}, outside the allowed range [0, {high - 1}]")
        return ids.to(self.device, torch.long)

    def _prompt(self, prompt_tokens, batch: int) -> Tensor:
        prompt = torch.as_tensor(prompt_tokens)
        q = self.num_quantizers
        if prompt.dim() != 3 or prompt.shape[-1] != q + 1:
            raise ValueError(f"prompt_tokens must have shape [batch, prompt frames, {q + 1}] (column 0 semantic "
                             f"ids, then {q} acoustic levels), got {tuple(prompt.shape)}")
        if prompt.shape[0] != batch:
            raise ValueError(f"prompt_tokens has batch size {prompt.shape[0]}, semantic_tokens {batch}")
        if prompt.shape[1] == 0:
            return prompt.to(self.device, torch.long)
        semantic = self._ids("prompt_tokens[..., 0] (semantic ids)", prompt[..., 0], "[batch, frames]",
                             self.num_semantic_tokens)
        acoustic = self._ids("prompt_tokens[..., 1:] (acoustic ids)", prompt[..., 1:], "[batch, frames, levels]",
                             self.codebook_size)
        return torch.cat((semantic.unsqueeze(-1), acoustic), dim=-1)


def _config_from_shapes(state: dict, given: dict) -> dict:
    """Constructor arguments read from a state dict's shapes ({} where it lacks the keys needed)."""
    layer = "net.conformer.layers.0."
    try:
        num_semantic_tokens, dim = state["semantic_token_emb.weight"].shape
        num_quantizers, _, codebook_size = state["net.to_logits.2.weight"].shape
        depthwise = state[layer + "conv.ds_conv.conv.weight"].shape
        inner = state[layer + "attn.fn.to_q.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("net.conformer.layers."))
        config = dict(dim=dim, depth=depth, ff_mult=state[layer + "ff1.fn.fn.net.0.weight"].shape[0] // dim,
                      conv_kernel_size=depthwise[-1], conv_expansion_factor=depthwise[0] // dim,
                      codebook_size=codebook_size, num_quantizers=num_quantizers,
                      num_semantic_tokens=num_semantic_tokens)
    except (KeyError, AttributeError, TypeError, ValueError, IndexError):
        return {}
    heads = given.get("heads")
    dim_head = given.get("dim_head") or (inner // heads if heads else 128 if inner % 128 == 0 else 32)
    return {**config, "dim_head": dim_head, "heads": heads or max(inner // dim_head, 1)}


def _top_k(logits: Tensor, threshold: float) -> Tensor:
    """Keep the ``ceil((1 - threshold) * C)`` largest logits of each row, -inf elsewhere."""
    k = math.ceil((1 - threshold) * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def _gumbel_sample(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """argmax(logits / T + Gumbel noise): one float32 uniform draw shaped like ``logits``."""
    device = logits.device if generator is None else generator.device
    uniform = torch.empty(logits.shape, dtype=torch.float32, device=device).uniform_(0, 1, generator=generator)
    noise = -torch.log(-torch.log(uniform.to(logits.device) + 1e-10) + 1e-10)
    return (logits / max(temperature, 1e-10) + noise).argmax(dim=-1)
