"""YIN pitch of training clips against signals of known pitch."""

from __future__ import annotations

import math

import torch

from anygpt.training.pitch import pitch_loss, yin_pitch

RATE, HOP = 16000, 320


def test_yin_follows_a_gliding_sawtooth_a_sine_and_leaves_noise_and_silence_unvoiced():
    t = torch.arange(2 * RATE) / RATE
    glide = 100 + 100 * t  # 100 -> 300 Hz
    cycles = torch.cumsum(glide / RATE, 0)
    saw = 0.3 * (2 * (cycles % 1) - 1)
    sine = 0.3 * torch.sin(2 * math.pi * 220 * t)
    late = torch.zeros_like(t)
    late[RATE // 2: RATE] = 0.3 * torch.sin(2 * math.pi * 440 * t[RATE // 2: RATE])
    noise = torch.randn(len(t), generator=torch.Generator().manual_seed(0)) * 0.1
    f0, voiced = yin_pitch(torch.stack([saw, sine, late, noise]), RATE, HOP)
    assert f0.shape == voiced.shape == (4, 100)
    centres = (torch.arange(100) * HOP + HOP / 2) / RATE
    inner = slice(2, -2)
    assert voiced[0, inner].all() and torch.allclose(f0[0, inner], (100 + 100 * centres)[inner], rtol=0.01)
    assert voiced[1, inner].all() and torch.allclose(f0[1, inner], torch.tensor(220.0), rtol=0.002)
    on = voiced[2].nonzero().flatten()
    assert 24 <= int(on.min()) <= 26 and 48 <= int(on.max()) <= 50
    assert torch.allclose(f0[2, 27:48], torch.tensor(440.0), rtol=0.002)
    assert voiced[3].float().mean() < 0.05


def test_pitch_loss_is_in_octaves_over_voiced_frames():
    target = torch.tensor([[100.0, 200.0, 400.0]])
    voiced = torch.tensor([[True, True, False]])
    loss, within = pitch_loss(torch.tensor([[200.0, 200.0, 50.0]]), target, voiced)
    assert math.isclose(float(loss), 0.5) and math.isclose(float(within), 0.5)
    loss, within = pitch_loss(target, target, torch.zeros_like(voiced))
    assert float(loss) == 0.0 and float(within) == 0.0
