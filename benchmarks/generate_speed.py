"""LM decode speed: the original's path (transformers ``generate``, dynamic cache) against ours, side by side.

The model is a LLaMA-2-7B shape with random bf16 weights and a 53k vocabulary. Rows, each timed after a warm-up
run of the same shape (CUDA graphs captured, caches warm):

- reference: ``model.generate`` with the original's speech sampling (top-k 50, repetition penalty 1.05), batch 1;
- ours, python loop: ``anygpt.lm.decoding.loop.generate`` (dynamic cache, host-side grammar and sampling), batch 1;
- ours, fast: ``anygpt.lm.decoding.fast.fast_generate`` (static cache, CUDA graphs, grammar and sampling on the
  GPU) at batch 1, 8, 16, 32 and 64, rows with mixed targets and presets (speech, music, text);
- chat replies through the same fast path (the reply grammar on the GPU, each segment with its preset) at batch 1
  and 8, and their ratio to the fast rows above (``chat_vs_predict``);
- a 5-s spoken reply (250 speech codes) and a text->image span (32 codes) through the fast path, and the spoken
  reply end to end (LM, then SoundStorm in bf16 and the SpeechTokenizer decode, full size, random weights), and
  streamed: the time from ``<sosp>`` to the first 0.5 s of audio (29 codes at the reply's pace, then the first
  ``ChunkedDecoder`` window);
- prefill of a 100-token prompt (a chat turn) and of a 1000-token one (ASR of a 20-s clip): time to the first token;
- last, the model quantized in place to int8 weights (torchao; ``--no-int8`` skips it): weight memory, and the
  fast rows at batch 1 and 8 again.

Every generation is held to its full budget (``min_new_tokens``) so rows are comparable. The roofline is the
weight bytes over the measured device copy bandwidth (one token per step reads every weight once). The same run
checks, by teacher forcing, that our logits match the transformers model's (bf16 tolerance; ids are not compared,
as random weights make near-ties flip).

    python benchmarks/generate_speed.py --device cuda         # prints a table, writes JSON
    python benchmarks/generate_speed.py --device cuda --batches 1 --profile  # + the kernels of a batch-1 step
    python benchmarks/generate_speed.py --device cpu --quick  # tiny shape, a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import device_name, sync, write_json

VOCAB = 53_000
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=4096),
}


class Rule:
    """The span rule of a codec (what the grammar needs), without its networks."""

    def __init__(self, modality: str, size: int, span_length: int | None = None, layers: int = 1):
        self.modality, self.size, self.span_length, self.layers = modality, size, span_length, layers

    def allowed(self, position: int) -> tuple[int, int]:
        width = self.size // self.layers
        return (position % self.layers) * width, (position % self.layers + 1) * width

    def can_end(self, length: int) -> bool:
        return length == self.span_length if self.span_length else length > 0 and length % self.layers == 0


def setup_vocab():
    from anygpt.tokenizers.vocab import VocabLayout

    layout = VocabLayout(32000)
    rules = {"image": Rule("image", 8192, 32), "speech": Rule("speech", 1024), "music": Rule("music", 8192, layers=4)}
    tags = {"image": ("👀", "<soim>", "<eoim>"), "speech": ("🗣️", "<sosp>", "<eosp>"), "music": ("🎶", "<somu>", "<eomu>")}
    for name, rule in rules.items():
        prefix, start, end = tags[name]
        layout.register(name, prefix, rule.size, start, end)
    return layout, rules


def job(layout, rules, target: str, tokens: int, stop_ids):
    """Preset and grammar of a row that must generate exactly ``tokens`` tokens."""
    from anygpt.lm.decoding.grammar import SpanGrammar
    from anygpt.lm.decoding.presets import DEFAULT_PRESETS, GenerationPreset

    base = DEFAULT_PRESETS[target].__dict__ | {"max_new_tokens": tokens, "min_new_tokens": tokens}
    preset = GenerationPreset(**base)
    grammar = SpanGrammar(layout.ranges.get(target), rules.get(target), stop_ids=stop_ids, lead_in_ids=[29871],
                          min_new_tokens=tokens, text_ranges=[(0, 32000)])
    return preset, grammar


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def profile_step(loop, steps: int = 20) -> None:
    """The GPU kernels of ``steps`` replayed decode steps (after the loop's last generation), most time first."""
    from torch.profiler import ProfilerActivity, profile

    slot = int(loop.slot)
    assert slot + steps + 3 <= loop.static.length, "no room left in the kept cache to profile"
    with torch.inference_mode():
        for i in range(3):
            loop.run_step(slot + i)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                loop.run_step(slot + i)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"profile: {len(events)} kernel kinds, {total / steps / 1000:.2f} ms of kernels per step")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:30]:
        print(f"  {e.self_device_time_total / steps:8.1f} us/step {e.count / steps:6.1f}x  {e.key[:100]}")


def weight_bytes(model) -> int:
    """Bytes of the model's parameters, counting the int8 data and scales inside quantized ones."""
    from anygpt.lm.decoding.quantize import is_quantized

    def size(t):
        if is_quantized(t):
            return sum(size(getattr(t, name)) for name in t.__tensor_flatten__()[0] if getattr(t, name) is not None)
        return t.numel() * t.element_size()

    return sum(size(p) for p in model.parameters())


def int8_rows(model, results, fast_rows, batches) -> None:
    """The same fast rows after int8 weight-only quantization (torchao), and the weights' memory before and after."""
    from anygpt.lm.decoding.fast import release
    from anygpt.lm.decoding.quantize import quantize_backbone

    release()
    before = weight_bytes(model) / 2**30
    quantize_backbone(model, "int8")
    torch.cuda.empty_cache()
    results["int8_weights_gib"] = {"bf16": before, "int8": weight_bytes(model) / 2**30}
    print(f"int8 weight-only (torchao): weights {before:.2f} GiB -> {results['int8_weights_gib']['int8']:.2f} GiB")
    for batch in [b for b in batches if b in (1, 8)]:
        fast_rows(batch, "ours: fast, int8 weights (torchao)")
    release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shape (CPU smoke run)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--out", default="benchmarks/results/generate_speed.json")
    parser.add_argument("--profile", action="store_true", help="print the kernels of a batch-1 decode step")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 weight-only rows (need torchao)")
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.lm.decoding import fast as fast_decode
    from anygpt.lm.decoding.fast import StaticLlama, fast_generate
    from anygpt.lm.decoding.loop import generate

    dev, quick = args.device, args.quick
    if quick:
        args.new_tokens, args.batches = 24, [1, 4]
    shape = SHAPES["tiny" if quick else "7b"]
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(dev):
        model = LlamaForCausalLM(LlamaConfig(**shape, vocab_size=VOCAB)).eval()
    torch.set_default_dtype(previous)
    model_bytes = weight_bytes(model)
    layout, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]
    n = args.new_tokens
    results = {"benchmark": "generate_speed", "device": device_name(dev), "quick": quick, "params": model_bytes // 2,
               "vocab": VOCAB, "new_tokens": n, "rows": []}

    def add(what, batch, seconds, tokens, **extra):
        row = {"what": what, "batch": batch, "seconds": seconds, "tokens_per_s": tokens / seconds, **extra}
        results["rows"].append(row)
        print(f"{what:<44} {batch:>5} {seconds:>9.3f} {tokens / seconds:>11.1f}", flush=True)

    if dev == "cuda":  # roofline: weights read once per step at the measured copy bandwidth
        block = torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
        copy = torch.empty_like(block)
        copy.copy_(block)
        seconds, _ = timed(lambda: [copy.copy_(block) for _ in range(10)], dev)
        bandwidth = 2 * block.numel() * 10 / seconds
        results["copy_bandwidth_gbs"] = bandwidth / 1e9
        results["roofline_tokens_per_s"] = bandwidth / model_bytes
        del block, copy
    prompt = [1] + torch.randint(3, 32000, (99,), generator=torch.Generator().manual_seed(1)).tolist()
    print(f"{'path':<44} {'batch':>5} {'seconds':>9} {'tokens/s':>11}")

    ids = torch.tensor([prompt], device=dev)
    settings = dict(do_sample=True, top_k=50, top_p=1.0, temperature=1.0, repetition_penalty=1.05,
                    max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    model.generate(ids, **{**settings, "max_new_tokens": 8, "min_new_tokens": 8})
    seconds, _ = timed(lambda: model.generate(ids, **settings), dev)
    add("reference: transformers generate, dynamic", 1, seconds, n)

    preset, grammar = job(layout, rules, "speech", n, stops)
    generate(model, [prompt], [preset], [job(layout, rules, "speech", 8, stops)[1]], [0], fast=False)
    seconds, _ = timed(lambda: generate(model, [prompt], [preset], [grammar], [0], fast=False), dev)
    add("ours: python loop (dynamic cache)", 1, seconds, n)

    targets = ["speech", "music", "text", "speech"]  # spans that can run the whole budget (an image closes at 32)

    def fast_rows(batch, what):
        def run():
            made = [job(layout, rules, targets[i % 4], n, stops) for i in range(batch)]
            return fast_generate(model, [prompt] * batch, [m[0] for m in made], [m[1] for m in made],
                                 list(range(batch)))
        first, _ = timed(run, dev)
        seconds, out = timed(run, dev)
        assert out is not None and all(len(o) == n for o in out), "the fast path did not run the full budget"
        add(what, batch, seconds, sum(map(len, out)), first_run_s=first)

    if 1 in args.batches:  # the step as separately compiled elementwise kernels between cuBLAS products
        fast_decode.WHOLE_LAYERS = False
        fast_rows(1, "ours: fast, per-op kernels")
        fast_decode.WHOLE_LAYERS = True
        fast_decode.release(unfuse=False)
    for batch in args.batches:
        fast_rows(batch, "ours: fast (static cache, graphs, GPU grammar)")
        if batch == 1 and args.profile and dev == "cuda":
            profile_step(fast_decode._CACHED["loop"])

    def chat_rows(batch):  # chat replies (reply grammar: text, spans, per-segment presets) on the same fast path
        from anygpt.lm.decoding.grammar import ReplyGrammar
        from anygpt.lm.decoding.presets import DEFAULT_PRESETS, GenerationPreset

        text = GenerationPreset(**DEFAULT_PRESETS["text"].__dict__ | {"do_sample": True, "max_new_tokens": n})
        presets = {"text": text, **{m: DEFAULT_PRESETS[m] for m in rules if m in DEFAULT_PRESETS}}

        def run():
            grammars = [ReplyGrammar(layout.ranges, rules, presets, stops, [(0, 32000)]) for _ in range(batch)]
            return fast_generate(model, [prompt] * batch, [text] * batch, grammars, list(range(batch)))
        timed(run, dev)
        seconds, out = timed(run, dev)
        assert out is not None, "chat replies did not take the fast path"
        add("ours: chat replies, fast (reply grammar)", batch, seconds, sum(map(len, out)))
        predict = next(r for r in results["rows"] if r["batch"] == batch and r["what"].startswith("ours: fast (static"))
        results.setdefault("chat_vs_predict", {})[batch] = results["rows"][-1]["tokens_per_s"] / predict["tokens_per_s"]

    for batch in [b for b in args.batches if b in (1, 8, 4)]:
        chat_rows(batch)

    for what, target, tokens in (("spoken reply, 250 speech codes", "speech", 252), ("text->image, 32 codes", "image", 34)):
        preset, grammar = job(layout, rules, target, tokens, stops)
        seconds, out = timed(lambda: fast_generate(model, [prompt], [preset], [grammar], [0]), dev)
        add(f"ours: {what}", 1, seconds, tokens)
        if target == "speech":
            lm_seconds, speech = seconds, layout.ranges["speech"]
            codes = speech.from_lm([t for t in out[0] if speech.start <= t < speech.stop])
    # the whole 5-s spoken reply: LM (above) + SoundStorm (RVQ 2-8) + SpeechTokenizer decode, full size, random
    from anygpt.decoders.soundstorm import SoundStormDecoder
    from anygpt.tokenizers.speech import REAL_CONFIG, TINY_CONFIG, SpeechTokenizerCodec

    decoder = SoundStormDecoder.tiny() if quick else SoundStormDecoder()
    codec = SpeechTokenizerCodec(config=dict(TINY_CONFIG if quick else REAL_CONFIG), checkpoint=None, decoder=decoder,
                                 decoder_dtype="bfloat16" if dev == "cuda" else "float32").to(dev)
    codec.decode([codes], seeds=[0])
    seconds, wav = timed(lambda: codec.decode([codes], seeds=[0]), dev)
    results["spoken_reply"] = {"codes": len(codes), "audio_s": wav[0].shape[-1] / 16000, "lm_s": lm_seconds,
                               "decode_s": seconds, "total_s": lm_seconds + seconds}
    print(f"5-s spoken reply end to end: LM {lm_seconds:.2f} s + SoundStorm/codec {seconds:.3f} s "
          f"= {lm_seconds + seconds:.2f} s for {wav[0].shape[-1] / 16000:.1f} s of audio")
    # streamed: the first 0.5 s of audio needs 25 codes + 4 of lookahead from the LM (at the spoken reply's pace
    # above), then one window of SoundStorm + codec decode (ChunkedDecoder, as `chat --stream` runs it)
    from anygpt.tokenizers.streaming import ChunkedDecoder

    def first_chunk():
        streamer = ChunkedDecoder(codec, {"seeds": [0]}, chunk=25, context=50, lookahead=4)
        for code in codes.tolist():
            if streamer.push(code):
                return code
    first_chunk()
    window_s, _ = timed(first_chunk, dev)
    lm_s = 29 * lm_seconds / 252
    results["first_half_second_audio"] = {"lm_s": lm_s, "decode_s": window_s, "total_s": lm_s + window_s}
    print(f"streamed spoken reply: first 0.5 s of audio {lm_s + window_s:.3f} s after <sosp> (LM 29 codes "
          f"{lm_s:.3f} s + first window {window_s:.3f} s)")

    # where a batch-1 step goes: the network alone (its CUDA graph), then grammar + sampling alone
    static = StaticLlama(model, 1, 512, graphs=dev == "cuda")
    one = torch.tensor([5], device=dev)
    valid1 = torch.ones((1, static.length), dtype=torch.bool, device=dev)
    with torch.inference_mode():
        for _ in range(3):
            static.step(one, one, 300, valid1)
        seconds, _ = timed(lambda: [static.step(one, one, 300, valid1) for _ in range(50)], dev)
        results["network_step_ms_batch1"] = seconds / 50 * 1000
        from anygpt.lm.decoding.fast import _Loop
        from anygpt.lm.decoding.gpu_grammar import GrammarTensors
        from anygpt.lm.decoding.gpu_sampling import filter_width, sampling_tensors

        preset, grammar = job(layout, rules, "speech", n, stops)
        table = GrammarTensors.from_grammars([grammar], VOCAB, dev)
        loop = _Loop(static, 0)
        loop.load(table, sampling_tensors([preset], dev), torch.zeros(1, dtype=torch.long, device=dev),
                  torch.tensor([10**6], device=dev), valid1, one.clone(), 1, filter_width([preset], VOCAB))
        logits = torch.randn(1, VOCAB, device=dev)
        seconds, _ = timed(lambda: [loop.choose(logits) for _ in range(50)], dev)
        results["choose_ms_batch1_no_graph"] = seconds / 50 * 1000
    print(f"batch-1 step: network (graph) {results['network_step_ms_batch1']:.2f} ms, grammar + sampling (no graph) "
          f"{results['choose_ms_batch1_no_graph']:.2f} ms")

    long_prompt = [1] + torch.randint(32000, 33024, (999,), generator=torch.Generator().manual_seed(2)).tolist()
    static = StaticLlama(model, 1, 1024 + 8, graphs=False)
    tokens = torch.tensor([long_prompt], device=dev)
    valid = torch.zeros((1, static.length), dtype=torch.bool, device=dev)
    valid[:, :1000] = True
    positions = torch.arange(1000, device=dev)[None]
    with torch.inference_mode():
        static.prefill(tokens, positions, valid)
        seconds, ours = timed(lambda: static.prefill(tokens, positions, valid), dev)
        reference = model(tokens).logits[0].float()
    results["ttft_1000_tokens_s"] = seconds
    with torch.inference_mode():  # the goal's prompt: 100 tokens
        short = (tokens[:, :100], positions[:, :100])
        static.prefill(*short, valid)
        results["ttft_100_tokens_s"], _ = timed(lambda: static.prefill(*short, valid), dev)
    # teacher forcing: every position of the 1000-token prompt, ours (prefill + steps) against transformers
    with torch.inference_mode():
        checks = StaticLlama(model, 1, 1024 + 8, graphs=dev == "cuda")
        last = checks.prefill(tokens[:, :900], positions[:, :900], valid)
        errors = [(last - reference[899]).abs().max().item()]
        for t in range(900, 1000):
            step = checks.step(tokens[:, t], positions[:, t], t, valid)
            errors.append((step - reference[t]).abs().max().item())
    results["teacher_forcing_max_abs_diff"] = max(errors)
    results["logit_scale"] = reference.abs().max().item()
    print(f"time to first token, 100-token prompt: {results['ttft_100_tokens_s'] * 1000:.1f} ms, 1000-token prompt: "
          f"{seconds * 1000:.1f} ms; teacher forcing max |diff| "
          f"{max(errors):.4f} (logits up to {results['logit_scale']:.2f})")
    if dev == "cuda" and not args.no_int8:  # last: quantizes the model in place
        try:
            int8_rows(model, results, fast_rows, args.batches)
        except Exception as error:  # keep the rows above
            results["int8_error"] = f"{type(error).__name__}: {error}"
            print(f"int8 rows failed: {results['int8_error'][:500]}")
    if dev == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        roof = results["roofline_tokens_per_s"]
        print(f"roofline {roof:.1f} tok/s at {results['copy_bandwidth_gbs']:.0f} GB/s; peak {results['peak_gib']:.1f} GiB")
        for row in results["rows"]:
            row["percent_of_roofline"] = 100 * row["tokens_per_s"] / (roof * row["batch"])
    write_json(args.out, results)


if __name__ == "__main__":
    main()
