"""Codecs by registered name: the package's own entry points, plug-ins registered from outside, the listing and the
error for a name that is not installed."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from anygpt import AnyGPTError
from anygpt.tokenizers import registry
from anygpt.tokenizers.base import instantiate

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_registers_its_codecs():
    from anygpt.tokenizers.image import SeedImageCodec
    from anygpt.tokenizers.music import EncodecMusicCodec
    from anygpt.tokenizers.speech import SpeechTokenizerCodec

    installed = registry.installed_codecs()
    assert {"speech", "music", "image"} <= set(installed)
    assert registry.codec_class("speech") is SpeechTokenizerCodec
    assert registry.codec_class("music") is EncodecMusicCodec and registry.codec_class("image") is SeedImageCodec


@pytest.fixture
def toy_plugin(monkeypatch):
    """A codec registered by another distribution: tests/toy_codec.py under the name 'toy'."""
    toy = EntryPoint("toy", "tests.toy_codec:ToyCodec", registry.GROUP)
    broken = EntryPoint("broken", "tests.no_such_module:Codec", registry.GROUP)
    original = registry.entry_points

    def points(group):
        return [*original(group=group), toy, broken] if group == registry.GROUP else original(group=group)

    monkeypatch.setattr(registry, "entry_points", points)


def test_a_registered_name_builds_the_codec(toy_plugin):
    from tests.toy_codec import ToyCodec

    built = instantiate({"class_path": "toy", "init_args": {"scale": 2.0}})
    assert type(built) is ToyCodec and built.scale == 2.0
    assert type(instantiate("toy")) is ToyCodec and instantiate("toy").scale == 1.0  # the short form
    assert "toy        tests.toy_codec:ToyCodec" in registry.describe()


def test_names_that_are_not_installed_or_do_not_load_are_one_line_errors(toy_plugin):
    with pytest.raises(AnyGPTError) as error:
        instantiate({"class_path": "no_such_codec"})  # not "audio": examples/plugins/anygpt-audio registers it
    message = str(error.value)
    assert "'no_such_codec' is not installed" in message and "'anygpt.codecs'" in message and "\n" not in message
    assert "speech" in message and "toy" in message  # what is there
    with pytest.raises(AnyGPTError, match="'broken' .*does not load: ModuleNotFoundError"):
        instantiate("broken")


def test_predict_runs_a_plugin_named_in_the_config(toy_plugin, tmp_path, monkeypatch):
    from anygpt.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "codes.txt").write_text("3 1 4 1")
    main(["predict", "--config", str(ROOT / "configs" / "tiny.yaml"),
          "--model.codecs", json.dumps({"toy": "toy"}),  # the short form: registered name, default arguments
          "--model.generation", json.dumps({"toy": {"max_new_tokens": 8}, "text": {"max_new_tokens": 6}}),
          "--data.init_args.requests", json.dumps(["text|toy|four codes", f"toy|text|{tmp_path / 'codes.txt'}"])])
    lines = [json.loads(line) for line in (tmp_path / "outputs" / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok"], lines


def test_anygpt_codecs_lists_them(capsys):
    from anygpt.cli import main

    main(["codecs"])
    out = capsys.readouterr().out
    assert "speech" in out and "anygpt.tokenizers.music:EncodecMusicCodec" in out
