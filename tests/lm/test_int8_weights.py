"""Weight-only int8 exports (``anygpt export --dtype int8``): half the bytes of float16, and ``UnifiedLM`` loads them
to the logits of the float model whose rows were rounded to int8 by hand here; damaged files are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from anygpt import AnyGPTError
from anygpt.lm.export import export
from anygpt.lm.int8_weights import FILE, dequantize, quantize
from anygpt.lm.unified import UnifiedLM
from tests.lm.test_export import SFT, _fit, _ids, _logits


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path, Path, UnifiedLM]:
    """Two SFT steps of the tiny config: the checkpoint, its float16 and int8 exports, the module."""
    ckpt, trained = _fit(tmp_path_factory.mktemp("fit"), SFT)
    root = tmp_path_factory.mktemp("export")
    return ckpt, export(ckpt, root / "fp16", dtype="float16"), export(ckpt, root / "int8", dtype="int8"), trained


def test_rows_round_to_int8_with_a_scale_each():
    weight = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 0.5]])
    stored = quantize({"w": weight, "norm": torch.ones(4)})
    assert stored["w"].dtype == torch.int8 and stored["norm"].dtype == torch.float16
    assert stored["w"].tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [-127, 42, 85, 21]]  # round(x / max * 127)
    scale = stored["w.int8_scale"].float()
    torch.testing.assert_close(scale[[0, 2]], torch.tensor([[1 / 127], [3 / 127]]).half().float(), atol=0, rtol=0)
    assert scale[1, 0] > 0  # an all-zero row keeps a positive scale (no division by zero)
    back = dequantize(stored)["w"]
    assert (back - weight).abs().max() <= 3 / 127 / 2 + 1e-3


def test_int8_export_is_smaller_and_loads_to_the_rounded_models_logits(exports):
    _, fp16, int8, trained = exports
    assert (int8 / FILE).is_file() and not list(int8.glob("model.safetensors*"))
    size = (int8 / FILE).stat().st_size
    assert size < 0.62 * (fp16 / "model.safetensors").stat().st_size

    reference = AutoModelForCausalLM.from_pretrained(fp16, dtype=torch.float32).eval()
    with torch.no_grad():  # the same rounding, done here: per row, max |w| / 127, round to nearest
        for name, param in reference.named_parameters():
            if param.ndim == 2:
                scale = (param.abs().amax(dim=1, keepdim=True) / 127).half().float()
                param.copy_((param / scale).round().clamp(-127, 127) * scale)
    loaded = UnifiedLM(backbone=str(int8), tokenizer=None, codecs=trained.hparams["codecs"]).eval()
    ids = _ids(trained)
    torch.testing.assert_close(_logits(loaded.backbone, ids), _logits(reference, ids), atol=1e-4, rtol=0)
    if reference.config.tie_word_embeddings:
        head, table = loaded.backbone.get_output_embeddings(), loaded.backbone.get_input_embeddings()
        assert head.weight.data_ptr() == table.weight.data_ptr()
    drift = (_logits(loaded.backbone, ids) - _logits(trained.backbone, ids)).abs().max()
    assert drift < 0.05  # int8 rows move the trained logits little


def test_a_damaged_int8_file_is_one_line(exports, tmp_path):
    _, _, int8, trained = exports
    stored = load_file(int8 / FILE)
    name = next(k for k, v in stored.items() if v.dtype == torch.int8)
    for case, damaged in (("no scale", {k: v for k, v in stored.items() if k != name + ".int8_scale"}),
                          ("no weight", {k: v for k, v in stored.items() if k != name})):
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        for path in int8.iterdir():
            if path.name != FILE:
                (folder / path.name).write_bytes(path.read_bytes())
        save_file(damaged, folder / FILE)
        with pytest.raises(AnyGPTError, match=r"model\.int8\.safetensors") as err:
            UnifiedLM(backbone=str(folder), tokenizer=None, codecs=trained.hparams["codecs"])
        assert "\n" not in str(err.value)


def test_an_int8_file_of_another_shape_is_one_line(exports, tmp_path):
    import json

    _, _, int8, trained = exports
    folder = tmp_path / "wider"
    folder.mkdir()
    for path in int8.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(AnyGPTError, match=r"model\.int8\.safetensors: does not fit its config: .*size mismatch") as err:
        UnifiedLM(backbone=str(folder), tokenizer=None, codecs=trained.hparams["codecs"])
    assert "\n" not in str(err.value)


def test_a_sharded_int8_export_is_refused(exports, tmp_path):
    ckpt = exports[0]
    with pytest.raises(AnyGPTError, match="one model.safetensors"):
        export(ckpt, tmp_path / "sharded", dtype="int8", max_shard_size="100KB")
    assert not (tmp_path / "sharded").exists() or not any((tmp_path / "sharded").iterdir())
