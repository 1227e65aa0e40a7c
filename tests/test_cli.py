"""The CLI: help, every shipped YAML parsed, tiny predict / fit / validate end to end, offline base config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from anygpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "tests" / "configs").rglob("*.yaml"))


def subcommand_for(path: Path) -> str:
    if "eval" in path.parts:
        return "evaluate"
    if "tokenize" in path.parts or path.name.startswith("tokenize"):
        return "tokenize"
    trains = {"fit", "codecs", "demo"} & set(path.parts) or path.name.startswith("fit")
    return "fit" if trains else "predict"


def test_top_level_help_is_instant(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("predict", "fit", "validate", "configs/tiny.yaml"))


def test_help_does_not_import_lightning():
    code = "import sys; from anygpt.cli import main; main(['--help']); assert 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_is_parsed(config, capsys):
    with pytest.raises(SystemExit) as done:
        main([subcommand_for(config), "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    if subcommand_for(config) == "evaluate":  # a protocol names its model's predict config
        assert "task:" in printed and "model_config:" in printed and "output_dir:" in printed
    else:
        assert "model:" in printed and "data:" in printed


def test_predict_help_lists_model_options(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--model.backbone" in out and "--data" in out


def test_tiny_predict_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    silent = tmp_path / "zero.wav"
    soundfile.write(silent, [], 16000)
    voice = ROOT / "examples" / "voice.wav"
    requests = tmp_path / "requests.txt"
    requests.write_text("\n".join([
        "text|music|A calm piano piece",
        f"music|text|{ROOT / 'examples' / 'tone.wav'}",
        f"music|text|{tmp_path / 'nope.wav'}",
        f"music|text|{silent}",
        "text|speech",
        "text|speech|Hello there, how are you?",
        f"text|speech|Hello there, how are you?|{voice}",
        f"speech|text|{voice}",
        f"text|speech|Hello again|{tmp_path / 'no_voice.wav'}",
        f"speech|text|{silent}",
        "text|image|A red kite over a green hill",
        f"image|text|{ROOT / 'examples' / 'picture.jpg'}",
        f"image|text|{silent}",
    ]) + "\n")
    main(["predict", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data.init_args.requests", "[]",
          "--data.init_args.requests_file", str(requests)])
    out = tmp_path / "outputs" / "tiny"
    assert not (tmp_path / "config.yaml").exists()  # nothing is written outside the output folder
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(13))
    assert [line["status"] for line in lines] == ["ok", "ok", "error", "error", "error",
                                                  "ok", "ok", "ok", "error", "error",
                                                  "ok", "ok", "error"]
    wav, rate = soundfile.read(lines[0]["file"])
    assert rate == 32000 and len(wav) > 0
    assert Path(lines[1]["file"]).read_text().strip() == lines[1]["text"].strip()
    assert "nope.wav" in lines[2]["error"] and "zero.wav" in lines[3]["error"]
    for line in lines[5:7]:  # text to speech, random voice and zero-shot: 16 kHz, 320 samples per code
        wav, rate = soundfile.read(line["file"])
        assert rate == 16000 and len(wav) == 320 * line["codes"] > 0
    assert Path(lines[7]["file"]).read_text().strip() == lines[7]["text"].strip()
    assert lines[8]["error"].startswith("request 8: voice prompt:") and "no_voice.wav" in lines[8]["error"]
    assert "zero.wav" in lines[9]["error"]
    picture = Image.open(lines[10]["file"])
    assert lines[10]["file"].endswith(".jpg") and picture.size == (32, 32) and lines[10]["codes"] == 32
    assert Path(lines[11]["file"]).read_text().strip() == lines[11]["text"].strip()
    assert "zero.wav" in lines[12]["error"]


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
@pytest.mark.parametrize("config, tasks", [
    ("fit_tiny", ["music_to_text", "text_to_music"]),
    ("fit_pretrain_tiny", ["music_to_text", "text_to_music", "speech_to_text", "text_to_speech"]),
    ("fit_sft_tiny", ["sft"]),
])
def test_tiny_fit_and_validate(subcommand, config, tasks, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    main([subcommand, "--config", f"tests/configs/{config}.yaml"])
    if subcommand == "validate":
        out = capsys.readouterr().out
        assert "val/loss" in out and "val/ppl" in out
        assert any(f"val/loss/{task}" in out for task in tasks)


def test_fit_checkpoint_reloads_and_validates(tmp_path, monkeypatch):
    """A checkpoint of `anygpt fit` holds the backbone only and rebuilds the whole model from its config."""
    import torch

    from anygpt.cli import AnyGPTCLI
    from anygpt.lm.unified import UnifiedLM

    monkeypatch.chdir(ROOT)
    cli = AnyGPTCLI(args=["fit", "--config", "tests/configs/fit_tiny.yaml", "--trainer.fast_dev_run", "false",
                          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path)])
    [ckpt] = list(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert not [k for k in state["state_dict"] if k.startswith("codec_modules.")]
    reloaded = UnifiedLM.load_from_checkpoint(ckpt)
    trained = cli.model.backbone.state_dict()
    for key, value in reloaded.backbone.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    assert list(reloaded.codecs) == ["music"]
    main(["validate", "--config", "tests/configs/fit_tiny.yaml", "--ckpt_path", str(ckpt),
          "--trainer.fast_dev_run", "false", "--trainer.limit_val_batches", "1"])


def test_base_config_offline_fails_with_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "anygpt", "predict", "--config", "configs/base.yaml"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("anygpt: error:") and "local path" in last
    weights = ("fnlp/AnyGPT-base", "fnlp/AnyGPT-speech-modules", "facebook/encodec_32khz", "AILab-CVC/seed-tokenizer-2",
               "eva_vit_g.pth", "stabilityai/stable-diffusion-2-1-unclip")
    assert any(name in last for name in weights)
