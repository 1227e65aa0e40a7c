"""ChunkedDecoder: a growing span decoded window by window."""

from __future__ import annotations

import pytest
import torch

from anygpt.tokenizers.streaming import ChunkedDecoder


class LocalCodec:
    """Each code becomes ``hop`` samples of ten times its value plus the seed, whatever the window."""

    hop = 3

    def __init__(self):
        self.windows: list[list[int]] = []

    def decode(self, codes, seeds=None):
        ids = codes[0].tolist()
        self.windows.append(ids)
        return [torch.tensor(ids, dtype=torch.float32).repeat_interleave(self.hop)[None] * 10 + seeds[0]]


def stream(decoder: ChunkedDecoder, codes: list[int]) -> list[torch.Tensor]:
    out = [wav for code in codes for wav in decoder.push(code)]
    rest = decoder.finish()
    return out + ([] if rest is None else [rest])


@pytest.mark.parametrize(("chunk", "context", "lookahead"), [(4, 0, 0), (5, 3, 2), (7, 100, 9)])
@pytest.mark.parametrize("splice", [0, 1, 3])
def test_chunks_hold_exactly_their_own_samples(chunk, context, lookahead, splice):
    codes = list(range(1, 24))
    codec = LocalCodec()
    chunks = stream(ChunkedDecoder(codec, {"seeds": [7]}, chunk, context, lookahead, splice), codes)
    whole = torch.tensor(codes, dtype=torch.float32).repeat_interleave(3)[None] * 10 + 7
    torch.testing.assert_close(torch.cat(chunks, dim=-1), whole)  # cross-fades of equal samples change nothing
    # a splice moves each join one sample past the code boundary, off the step between two codes' samples
    moved = 1 if min(splice, lookahead) else 0
    assert [c.shape[-1] for c in chunks[:-1]] == [3 * chunk + moved * (i == 0) for i in range(len(chunks) - 1)]
    for window in codec.windows[:-1]:  # each window: its context, its chunk, its lookahead
        assert len(window) <= context + chunk + lookahead


def test_a_chunk_fades_in_from_the_last_windows_lookahead():
    class WindowCodec:  # every sample of a window's decode is its window number
        calls = 0

        def decode(self, codes):
            WindowCodec.calls += 1
            return [torch.full((1, 3 * len(codes[0])), float(WindowCodec.calls))]

    decoder = ChunkedDecoder(WindowCodec(), chunk=4, context=0, lookahead=2)
    first, second = [wav for code in range(10) for wav in decoder.push(code)]
    assert torch.equal(first, torch.ones(1, 12))
    ramp = second[0, :6]
    assert (ramp > 1).all() and (ramp < 2).all() and (ramp.diff() > 0).all()  # from window 1's tail to window 2
    assert torch.equal(second[0, 6:], torch.full((6,), 2.0))


def test_a_join_lands_where_the_waveform_steps_least():
    class SteepCodec:  # a steep ramp with one flat stretch of samples, the same in every window
        def decode(self, codes):
            start = codes[0][0].item() * 8
            x = torch.arange(start, start + 8 * len(codes[0]), dtype=torch.float32)
            return [torch.where((x >= 37) & (x < 39), 0.0, x * 5.0)[None]]

    chunks = stream(ChunkedDecoder(SteepCodec(), chunk=4, context=2, lookahead=2, splice=1), list(range(12)))
    assert chunks[0].shape[-1] == 38  # 32 samples of its 4 codes, then the lookahead's up to its flat step (37-38)
    joined = torch.cat(chunks, dim=-1)[0]
    assert joined.shape[-1] == 96 and float(joined[38] - joined[37]) == 0.0


def test_a_chunk_waits_for_its_lookahead():
    decoder = ChunkedDecoder(LocalCodec(), {"seeds": [0]}, chunk=4, context=2, lookahead=3)
    assert [len(decoder.push(c)) for c in range(1, 8)] == [0, 0, 0, 0, 0, 0, 1]
    assert decoder.finish(length=9) is not None and decoder.emitted == 7
    assert decoder.finish() is None


def test_speech_chunks_join_to_the_length_of_the_whole_decode():
    from anygpt.tokenizers.speech import SpeechTokenizerCodec

    codec = SpeechTokenizerCodec.tiny()
    codes = torch.randint(0, codec.vocab_size, (43,), generator=torch.Generator().manual_seed(0))
    whole = codec.decode([codes], seeds=[3])[0]
    chunks = stream(ChunkedDecoder(codec, {"seeds": [3]}, chunk=8, context=16, lookahead=4), codes.tolist())
    sizes = [c.shape[-1] for c in chunks]  # the last 11 codes wait for the end; joins move at most one code
    assert len(sizes) == 5 and all(abs(sum(sizes[:i + 1]) - 8 * 320 * (i + 1)) < 320 for i in range(4))
    assert torch.cat(chunks, dim=-1).shape == whole.shape


def test_bad_chunking_is_one_line():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        ChunkedDecoder(LocalCodec(), chunk=0)


def test_a_harmonic_decoder_streams_in_phase():
    from torch import nn

    from anygpt.tokenizers.speech import TINY_CONFIG, SpeechTokenizerCodec

    codec = SpeechTokenizerCodec(config={**TINY_CONFIG, "harmonics": 4}, checkpoint=None, decoder=None)
    harmonic = codec.model.decoder
    with torch.no_grad():  # silence the SEANet path; a steady voiced 150 Hz tone
        last = [m for m in harmonic.seanet.model[3:].modules() if isinstance(m, nn.Conv1d)][-1]
        last.weight.zero_()
        last.bias.zero_()
        harmonic.head.bias[0] = -0.237  # f0 = 40 * 20 ** sigmoid(-0.237), about 150 Hz
        harmonic.head.bias[1:] = 5.0
    codes = torch.randint(0, codec.vocab_size, (37,), generator=torch.Generator().manual_seed(1))
    whole = codec.decode([codes])[0]
    assert whole.abs().max() > 1.0  # the tone is there
    joined = torch.cat(stream(ChunkedDecoder(codec, chunk=8, context=6, lookahead=3), codes.tolist()), dim=-1)
    assert joined.shape == whole.shape
    assert torch.allclose(joined, whole, atol=1e-3)

    class Unpinned:  # the same codec without the phase hook: windows restart the oscillator
        decode = codec.decode

    free = torch.cat(stream(ChunkedDecoder(Unpinned(), chunk=8, context=6, lookahead=3), codes.tolist()), dim=-1)
    assert (free - whole).abs().max() > 0.5
