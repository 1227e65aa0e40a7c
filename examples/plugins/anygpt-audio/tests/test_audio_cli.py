"""The example's tiny configs through the CLI: `anygpt predict` runs text|audio and audio|text through the plug-in
named in YAML, and `anygpt tokenize` writes AnyGPT records of audio spans."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG = CONFIGS / "tiny_audio.yaml"


def chirp(path: Path, rate: int = 22050, seconds: float = 0.5) -> None:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * (300 + 900 * t) * t), rate)


def test_predict_runs_audio_requests_through_the_plugin(tmp_path, monkeypatch):
    from anygpt.cli import main

    monkeypatch.chdir(tmp_path)  # the config writes to outputs/tiny_audio under the working folder
    chirp(tmp_path / "chirp.wav")
    requests = ["text|audio|A door slams shut", f"audio|text|{tmp_path / 'chirp.wav'}",
                f"audio|text|{tmp_path / 'missing.wav'}"]
    main(["predict", "--config", str(CONFIG), "--data.init_args.requests", json.dumps(requests)])

    out = tmp_path / "outputs" / "tiny_audio"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok", "error"], lines
    to_audio, to_text, failed = lines
    info = sf.info(to_audio["file"])
    assert to_audio["sample_rate"] == info.samplerate == 24000 and info.channels == 1
    assert to_audio["codes"] > 0 and to_audio["codes"] % 4 == 0 and info.frames == to_audio["codes"] // 4 * 320
    # 0.5 s at 75 frames/s is 38 frames of 4 codes between <soau> and <eoau>, beside the instruction's tokens
    assert to_text["prompt_tokens"] > 38 * 4 + 2 and isinstance(to_text["text"], str)
    assert Path(to_text["file"]).read_text(encoding="utf-8") == to_text["text"] + "\n"
    assert "missing.wav" in failed["error"] and "\n" not in failed["error"]


def test_anygpt_codecs_lists_the_plugin(capsys):
    from anygpt.cli import main

    main(["codecs"])
    assert "audio      anygpt_audio:EncodecAudioCodec  (anygpt-audio" in capsys.readouterr().out


def test_tokenize_writes_anygpt_records_of_audio_spans(tmp_path, monkeypatch):
    from anygpt.cli import main

    monkeypatch.chdir(tmp_path)
    chirp(tmp_path / "a.wav", seconds=0.5)
    chirp(tmp_path / "b.wav", rate=48000, seconds=7.0)  # longer than the 5-s window
    manifest = tmp_path / "sounds.jsonl"
    manifest.write_text('{"path": "a.wav", "text": "a rising whistle"}\n{"path": "b.wav", "text": "a long one"}\n')
    main(["tokenize", "--config", str(CONFIGS / "tokenize_tiny_audio.yaml"), "--data.manifest", str(manifest),
          "--data.output_dir", str(tmp_path / "shards")])
    records = [json.loads(line) for shard in sorted((tmp_path / "shards").glob("*.jsonl"))
               for line in shard.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == ["a rising whistle", "a long one"]
    for record, frames in zip(records, [38, 375]):  # ceil(12000 / 320); 5 s at 75 frames/s
        span = record["audio"]
        assert span.startswith("<soau><👂") and span.endswith("><eoau>")
        codes = [int(code) for code in re.findall(r"<👂(\d+)>", span)]
        assert len(codes) == 4 * frames and span.count("<") == len(codes) + 2
        assert all(1024 * (i % 4) <= code < 1024 * (i % 4 + 1) for i, code in enumerate(codes))
