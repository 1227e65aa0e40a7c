"""hub.resolve: local paths, and one clear line when weights cannot be fetched."""

from __future__ import annotations

import pytest

from anygpt.hub import WeightsNotFoundError, resolve


def test_local_file_and_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve(tmp_path) == tmp_path
    assert resolve(str(tmp_path), "config.json") == tmp_path / "config.json"
    with pytest.raises(WeightsNotFoundError, match="missing from the local folder"):
        resolve(tmp_path, "model.safetensors")


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve(str(tmp_path / "nothing" / "here.pt"))
    assert "\n" not in str(err.value) and "here.pt" in str(err.value)


def test_offline_repo_names_the_file_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve("fnlp/AnyGPT-base", "config.json")
    message = str(err.value)
    assert "\n" not in message
    assert "config.json" in message and "fnlp/AnyGPT-base" in message and "local path" in message


def test_repo_ids_are_found_in_a_local_mirror(monkeypatch, tmp_path):
    folder = tmp_path / "facebook" / "encodec_32khz"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("ANYGPT_WEIGHTS", str(tmp_path))
    assert resolve("facebook/encodec_32khz") == folder
    assert resolve("facebook/encodec_32khz", "config.json") == folder / "config.json"
    with pytest.raises(WeightsNotFoundError, match="missing from the local folder"):
        resolve("facebook/encodec_32khz", "model.safetensors")


def test_folder_download_skips_duplicate_weight_formats(monkeypatch, tmp_path):
    import huggingface_hub

    calls = {}
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo: ["config.json", "model.safetensors", "pytorch_model.bin"])

    def fake_snapshot(repo_id, ignore_patterns=None):
        calls["ignore"] = ignore_patterns
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert resolve("someone/model") == tmp_path
    assert "*.bin" in calls["ignore"]
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: ["config.json", "pytorch_model.bin"])
    resolve("someone/model")
    assert calls["ignore"] is None


def test_resolve_file_takes_paths_and_repo_file_references(monkeypatch, tmp_path):
    from anygpt.hub import resolve_file

    folder = tmp_path / "fnlp" / "AnyGPT-speech-modules" / "soundstorm"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x")
    monkeypatch.setenv("ANYGPT_WEIGHTS", str(tmp_path))
    assert resolve_file("fnlp/AnyGPT-speech-modules/soundstorm/model.pt") == folder / "model.pt"
    assert resolve_file(folder / "model.pt") == folder / "model.pt"
    with pytest.raises(WeightsNotFoundError, match="got a folder"):
        resolve_file(str(folder))
    with pytest.raises(WeightsNotFoundError, match="other.pt"):
        resolve_file("fnlp/AnyGPT-speech-modules/soundstorm/other.pt")
    with pytest.raises(WeightsNotFoundError, match="owner>/<repo>/<file>"):
        resolve_file("just-a-name.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:  # not in the mirror: the Hub, offline here
        resolve_file("fnlp/Other-repo/speechtokenizer/ckpt.dev")
    assert "speechtokenizer/ckpt.dev of fnlp/Other-repo" in str(err.value) and "\n" not in str(err.value)


def test_urls_are_not_fetched_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ANYGPT_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="offline.*local path"):
        resolve("https://example.org/weights/eva_vit_g.pth")


def test_url_files_are_found_in_the_mirror_by_name(monkeypatch, tmp_path):
    (tmp_path / "eva_vit_g.pth").write_bytes(b"x")
    monkeypatch.setenv("ANYGPT_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
    assert resolve(url) == tmp_path / "eva_vit_g.pth"
