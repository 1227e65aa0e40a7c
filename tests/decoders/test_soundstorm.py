"""SoundStormDecoder against the golden fixtures of AnyGPT's vendored SoundStorm (tiny config, float32 CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.decoders.soundstorm import SoundStormDecoder
from tests.conftest import fixture_path

CONFIG_KEYS = ("dim", "depth", "heads", "dim_head", "ff_mult", "conv_kernel_size", "conv_expansion_factor",
               "codebook_size", "num_quantizers", "num_semantic_tokens")


@pytest.fixture(scope="module")
def golden():
    folder = fixture_path("soundstorm", "public")
    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    cases = torch.load(folder / "cases.pt", weights_only=True)
    model = SoundStormDecoder(**{key: config[key] for key in CONFIG_KEYS})
    model.load_state_dict(state, strict=True)
    return model.eval(), state, cases


def test_state_dict_names_and_tiny_recipe_match_the_fixture(golden):
    model, state, _ = golden
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    # tiny() draws its weights like the fixture's recipe: same seed -> the very same tensors
    tiny = SoundStormDecoder.tiny(seed=1234, codebook_size=32, num_semantic_tokens=32)
    assert all(torch.equal(tiny.state_dict()[k], v) for k, v in state.items())


def test_forward_logits(golden):
    model, _, cases = golden
    case = cases["forward_logits"]
    inputs = case["inputs"]
    with torch.no_grad():
        out = model.logits(inputs["semantic_tokens"], inputs["acoustic_tokens"], inputs["seq_mask"])
        unmasked = model.logits(inputs["semantic_tokens"], inputs["acoustic_tokens"])
    expected = case["expected"]["logits"].view(2, 20, 7, 32)
    assert out.shape == (2, 20, 7, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmasked, expected, atol=1e-5, rtol=0)  # mask None == all True


def test_forward_logits_intermediates(golden):
    """Block outputs localise a mismatch (conformer input, each block, the heads)."""
    model, _, cases = golden
    case = cases["forward_logits"]
    inputs, inter = case["inputs"], case["intermediates"]
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(out)) for layer in model.net.conformer.layers]
    hooks.append(model.net.conformer.register_forward_hook(lambda m, args, out: seen.insert(0, args[0])))
    try:
        with torch.no_grad():
            model.logits(inputs["semantic_tokens"], inputs["acoustic_tokens"], inputs["seq_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(seen[0], inter["conformer_input"], atol=1e-5, rtol=0)
    for got, want in zip(seen[1:], inter["block_outputs"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_from_pretrained_reads_the_config_from_the_weights(golden):
    model, _, cases = golden
    loaded = SoundStormDecoder.from_pretrained(str(fixture_path("soundstorm", "public", "state_dict.pt")))
    assert (loaded.codebook_size, loaded.num_semantic_tokens, len(loaded.net.conformer.layers)) == (32, 32, 2)
    inputs = cases["forward_logits"]["inputs"]
    with torch.no_grad():
        out = loaded.logits(inputs["semantic_tokens"], inputs["acoustic_tokens"])
    torch.testing.assert_close(out, cases["forward_logits"]["expected"]["logits"].view(2, 20, 7, 32), atol=1e-5,
                               rtol=0)


def test_forward_logits_padded(golden):
    model, _, cases = golden
    case, plain = cases["forward_logits_padded"], cases["forward_logits"]
    inputs = case["inputs"]
    assert not inputs["seq_mask"][1, 15:].any() and inputs["seq_mask"][1, :15].all()
    with torch.no_grad():
        out = model.logits(inputs["semantic_tokens"], inputs["acoustic_tokens"], inputs["seq_mask"])
    expected = case["expected"]["logits"].view(2, 20, 7, 32)
    # every row is returned, padded frames included, and all of them match the original
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], plain["expected"]["logits"].view(2, 20, 7, 32)[0], atol=1e-5, rtol=0)
    # the mask matters: batch 1 differs from the unpadded call
    assert (out[1] - plain["expected"]["logits"].view(2, 20, 7, 32)[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["generate_unprompted", "generate_prompted"])
def test_generate_matches_the_original(golden, name):
    model, _, cases = golden
    case = cases[name]
    semantic, prompt = case["inputs"]["semantic_tokens"], case["inputs"].get("prompt_tokens")
    # steps=1 needs no RNG agreement (its one Gumbel draw is at temperature 0)
    out = model.generate(semantic, prompt_tokens=prompt, steps=1)
    assert out.dtype == torch.long and torch.equal(out, case["expected"]["steps_1"])
    # steps=3 samples at T=1/3 and 2/3: the same draws as the original's, from the global RNG or a generator
    torch.manual_seed(7)
    assert torch.equal(model.generate(semantic, prompt_tokens=prompt, steps=3), case["expected"]["steps_3"])
    generator = torch.Generator().manual_seed(7)
    out = model.generate(semantic, prompt_tokens=prompt, steps=3, generator=generator)
    assert torch.equal(out, case["expected"]["steps_3"])
    torch.manual_seed(0)
    assert not torch.equal(model.generate(semantic, prompt_tokens=prompt, steps=3), case["expected"]["steps_3"])


@pytest.mark.parametrize("name", ["generate_unprompted", "generate_prompted"])
def test_each_traced_pass(golden, name):
    """Every network pass of the original's generate(): same input ids -> same logits (localises a failure)."""
    model, _, cases = golden
    case = cases[name]
    semantic, prompt = case["inputs"]["semantic_tokens"], case["inputs"].get("prompt_tokens")
    cond_ids = semantic if prompt is None else torch.cat((prompt[:, :, 0], semantic), dim=1)
    trace = case["trace"]["steps_3"]
    assert len(trace["net_inputs"]) == 3 + 7
    for ids, logits in zip(trace["net_inputs"], trace["net_logits"], strict=True):
        with torch.no_grad():
            out = model.logits(cond_ids, ids.view(1, -1, 7))
        torch.testing.assert_close(out.reshape(logits.shape), logits, atol=1e-5, rtol=0)


def test_full_size_layout():
    from anygpt.decoders.soundstorm import _config_from_shapes

    keys = json.loads(fixture_path("soundstorm", "full_size_keys.json").read_text())
    with torch.device("meta"):
        model = SoundStormDecoder()
        state = {key: torch.empty(shape) for key, shape in keys}
    model.load_state_dict(state, strict=True, assign=True)
    assert _config_from_shapes(state, {}) == dict(dim=1024, depth=12, heads=8, dim_head=128, ff_mult=4,
                                                  conv_kernel_size=31, conv_expansion_factor=2, codebook_size=1024,
                                                  num_quantizers=7, num_semantic_tokens=1024)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == keys
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 351.38) < 0.01
    assert (model.codebook_size, model.num_quantizers, model.mask_id) == (1024, 7, 1024)


@pytest.fixture(scope="module")
def tiny():
    return SoundStormDecoder.tiny(seed=0)


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long)), "semantic_tokens is empty"),
    (lambda m: m.generate(torch.tensor([[1, 1024, 2]])), r"semantic_tokens holds id 1024.*\[0, 1023\]"),
    (lambda m: m.generate(torch.tensor([[1, -3]])), r"semantic_tokens holds id -3"),
    (lambda m: m.generate(torch.tensor([1, 2, 3])), r"semantic_tokens must have shape \[batch, frames\]"),
    (lambda m: m.generate(torch.tensor([[1.0, 2.0]])), "integer ids"),
    (lambda m: m.generate(torch.tensor([[1, 2]]), steps=0), "steps must be an integer >= 1"),
    (lambda m: m.generate(torch.tensor([[1, 2]]), prompt_tokens=torch.zeros(1, 3, 7, dtype=torch.long)),
     r"prompt_tokens must have shape \[batch, prompt frames, 8\]"),
    (lambda m: m.generate(torch.tensor([[1, 2]]), prompt_tokens=torch.zeros(2, 3, 8, dtype=torch.long)),
     "prompt_tokens has batch size 2, semantic_tokens 1"),
    (lambda m: m.generate(torch.tensor([[1, 2]]), prompt_tokens=torch.full((1, 3, 8), 1024)),
     r"prompt_tokens\[\.\.\., 0\] \(semantic ids\) holds id 1024"),
    (lambda m: m.generate(torch.tensor([[1, 2]]),
                          prompt_tokens=torch.cat((torch.zeros(1, 3, 1), torch.full((1, 3, 7), 1024)), -1).long()),
     r"prompt_tokens\[\.\.\., 1:\] \(acoustic ids\) holds id 1024, outside the allowed range \[0, 1023\]"),
    (lambda m: m.logits(torch.tensor([[1, 2]]), torch.full((1, 2, 7), 1025)), "acoustic_tokens holds id 1025"),
    (lambda m: m.logits(torch.tensor([[1, 2]]), torch.zeros(1, 3, 7, dtype=torch.long)), "acoustic_tokens must have"),
])
def test_bad_inputs_raise_one_line(tiny, call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(tiny)
    assert "\n" not in str(err.value)


def test_from_pretrained_errors_and_round_trip(tmp_path, tiny):
    with pytest.raises(AnyGPTError) as err:
        SoundStormDecoder.from_pretrained(str(tmp_path / "absent.pt"))
    assert "\n" not in str(err.value) and "absent.pt" in str(err.value)
    config = dict(dim=64, depth=2, heads=2, dim_head=32, conv_kernel_size=7)
    state = tiny.state_dict()
    broken = dict(state)
    del broken["net.conformer.layers.1.conv.net2.1.gamma"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(AnyGPTError, match=r"missing \['net.conformer.layers.1.conv.net2.1.gamma'\]") as err:
        SoundStormDecoder.from_pretrained(str(tmp_path / "broken.pt"), **config)
    assert "\n" not in str(err.value) and "broken.pt" in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AnyGPTError, match="cannot read"):
        SoundStormDecoder.from_pretrained(str(tmp_path / "junk.pt"), **config)
    with pytest.raises(AnyGPTError, match="size mismatch|does not fit"):
        SoundStormDecoder.from_pretrained(str(tmp_path / "broken.pt"), **dict(config, dim_head=16))

    semantic = torch.randint(0, 1024, (2, 9), generator=torch.Generator().manual_seed(1))
    acoustic = torch.randint(0, 1025, (2, 9, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tiny.logits(semantic, acoustic)
    for name, saved in [("x.pt", state), ("pkg.pt", {"model": state, "step": 3})]:
        torch.save(saved, tmp_path / name)
        loaded = SoundStormDecoder.from_pretrained(str(tmp_path / name))  # config read from the shapes
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded.logits(semantic, acoustic), expected)
        assert torch.equal(loaded.generate(semantic, steps=1), tiny.generate(semantic, steps=1))


def test_tiny_generate_shapes_ranges_and_batching(tiny):
    assert torch.equal(SoundStormDecoder.tiny(seed=0).state_dict()["net.heads.0.weight"],
                       tiny.state_dict()["net.heads.0.weight"])
    assert not torch.equal(SoundStormDecoder.tiny(seed=1).state_dict()["net.heads.0.weight"],
                           tiny.state_dict()["net.heads.0.weight"])
    before = torch.random.get_rng_state()
    SoundStormDecoder.tiny(seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched

    semantic = torch.randint(0, 1024, (3, 12), generator=torch.Generator().manual_seed(3))
    prompt = torch.randint(0, 1024, (3, 4, 8), generator=torch.Generator().manual_seed(4))
    for kwargs in [{}, {"prompt_tokens": prompt}]:
        out = tiny.generate(semantic, steps=1, **kwargs)
        assert out.shape == (3, 12, 8) and out.dtype == torch.long
        assert torch.equal(out[..., 0], semantic)
        assert out[..., 1:].min() >= 0 and out[..., 1:].max() < 1024
        assert len(out[..., 1:].unique()) > 7  # outputs depend on the input
        rows = [tiny.generate(semantic[i:i + 1], steps=1, **{k: v[i:i + 1] for k, v in kwargs.items()})
                for i in range(3)]
        assert torch.equal(out, torch.cat(rows))
    # seeded sampling is reproducible; non-greedy sampling runs and stays in range
    a = tiny.generate(semantic, steps=3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, tiny.generate(semantic, steps=3, generator=torch.Generator().manual_seed(9)))
    b = tiny.generate(semantic, steps=2, greedy=False, generator=torch.Generator().manual_seed(9))
    assert b.shape == (3, 12, 8) and b[..., 1:].max() < 1024
    # a prompt conditions the output
    assert not torch.equal(tiny.generate(semantic, steps=1), tiny.generate(semantic, prompt_tokens=prompt, steps=1))


@pytest.mark.parametrize(("frames", "steps"), [(1, 3), (2, 3), (3, 8), (40, 3)])
def test_pass_count_and_random_draws(tiny, frames, steps):
    """Always steps + 1 level-0 passes (also where the cosine count hits 0 early) and 6 more; one draw per
    level-0 pass whose re-mask count is nonzero."""
    calls = []
    hook = tiny.net.register_forward_hook(lambda m, args, out: calls.append(1))
    generator = torch.Generator().manual_seed(0)
    try:
        tiny.generate(torch.zeros(1, frames, dtype=torch.long), steps=steps, generator=generator)
    finally:
        hook.remove()
    assert len(calls) == steps + 1 + 6
    counts = (torch.cos(torch.linspace(0.0, 1.0, steps + 1) * torch.pi / 2) * frames).long()
    replay = torch.Generator().manual_seed(0)
    for _ in range(int((counts > 0).sum())):
        torch.empty(1, frames * 7, 1024).uniform_(0, 1, generator=replay)
    assert torch.equal(generator.get_state(), replay.get_state())


def test_runs_in_bfloat16():
    model = SoundStormDecoder.tiny(seed=0).to(torch.bfloat16)
    semantic = torch.randint(0, 1024, (1, 20), generator=torch.Generator().manual_seed(5))
    out = model.generate(semantic, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 20, 8) and out[..., 1:].max() < 1024
    with torch.no_grad():
        logits = model.logits(semantic, torch.full((1, 20, 7), 1024))
    assert logits.dtype == torch.bfloat16
    assert model.net.conformer.rotary_emb(20)[0].dtype == torch.float32
