"""Find weights on disk or fetch them: one function for local paths, HF repo ids and URLs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from anygpt import AnyGPTError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class WeightsNotFoundError(AnyGPTError):
    """A weight file is neither on disk nor downloadable; the message says what to fetch and where to put it."""


def cache_dir() -> Path:
    """Where downloaded URLs are kept (``$ANYGPT_CACHE`` or ``~/.cache/anygpt``)."""
    return Path(os.environ.get("ANYGPT_CACHE", Path.home() / ".cache" / "anygpt"))


def resolve(source: str | os.PathLike, filename: str | None = None, ignore: list[str] | None = None) -> Path:
    """Local path of ``source`` (or of ``filename`` inside it).

    Args:
        source: A local file or folder, a Hugging Face repo id (``fnlp/AnyGPT-base``) or an http(s) URL. A repo
            id is first looked up as a folder ``$ANYGPT_WEIGHTS/<repo id>`` (a local mirror), then on the Hub; a
            URL as the file ``$ANYGPT_WEIGHTS/<its file name>``, then downloaded (cached in ``$ANYGPT_CACHE``).
        filename: A file inside ``source`` (a folder or repo); None means the whole folder or repo.
        ignore: File patterns of a repo not to download (``["image_encoder/*"]``) when fetching a whole repo.

    Raises:
        WeightsNotFoundError: Not on disk and not downloadable (offline, missing file, bad id): one line
            naming the file and how to supply a local path instead.
    """
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.exists():
        target = local / filename if filename else local
        if not target.exists():
            raise WeightsNotFoundError(f"{filename!r} is missing from the local folder {local}")
        return target
    if text.startswith(("http://", "https://")):
        mirror = os.environ.get("ANYGPT_WEIGHTS")
        name = text.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if mirror and name and (Path(mirror) / name).is_file():  # a URL's file kept in the mirror by its name
            return Path(mirror) / name
        return _download_url(text)
    if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        mirror = os.environ.get("ANYGPT_WEIGHTS")
        if mirror and (Path(mirror) / text).exists():
            return resolve(Path(mirror) / text, filename)
        return _download_repo(text, filename, ignore)
    raise WeightsNotFoundError(f"no such file or folder: {text}" + (f" (looking for {filename})" if filename else ""))


def resolve_file(ref: str | os.PathLike) -> Path:
    """Local path of one weight file named by ``ref``.

    Args:
        ref: A local file, an http(s) URL, or ``<owner>/<repo>/<path in repo>`` for a file in a Hugging Face repo
            (``fnlp/AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt``), looked up in the
            ``$ANYGPT_WEIGHTS`` mirror first, as ``resolve`` does.

    Raises:
        WeightsNotFoundError: As ``resolve``; also for a folder given where a file is needed.
    """
    text = os.fspath(ref)
    local = Path(text).expanduser()
    if local.exists() or text.startswith(("http://", "https://", ".", "/", "~")):
        path = resolve(text)
    else:
        parts = text.split("/")
        if len(parts) < 3 or not _REPO_ID.match("/".join(parts[:2])):
            raise WeightsNotFoundError(f"no such file: {text} (give a local path, a URL or <owner>/<repo>/<file>)")
        path = resolve("/".join(parts[:2]), "/".join(parts[2:]))
    if path.is_dir():
        raise WeightsNotFoundError(f"expected a weight file, got a folder: {path}")
    return path


def read_state(path: str | os.PathLike) -> object:
    """The object in a weight file: a ``.safetensors`` file's tensors (half-precision ones as float32), else what
    ``torch.load(weights_only=True)`` reads. Errors propagate to the caller, which names the model."""
    import torch

    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in load_file(path).items()}
    return torch.load(path, map_location="cpu", weights_only=True)


def _download_repo(repo_id: str, filename: str | None, ignore: list[str] | None = None) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if filename:
            return Path(hf_hub_download(repo_id, filename))
        skipped = (_duplicate_weights(repo_id) or []) + list(ignore or [])
        return Path(snapshot_download(repo_id, ignore_patterns=skipped or None))
    except Exception as err:  # offline, gated, missing: all end in the same advice
        what = f"{filename} of {repo_id}" if filename else f"the files of {repo_id}"
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200] or type(err).__name__
        fetch = f"hf download {repo_id}{' ' + filename if filename else ''} --local-dir DIR"
        raise WeightsNotFoundError(
            f"cannot get {what} ({type(err).__name__}: {reason}); fetch it with `{fetch}` "
            f"on a machine with network access and give the local path DIR instead of '{repo_id}' "
            f"(or make DIR $ANYGPT_WEIGHTS/{repo_id})"
        ) from err


def _duplicate_weights(repo_id: str) -> list[str] | None:
    """Where a repo has safetensors, skip its other weight formats (they hold the same tensors)."""
    try:
        from huggingface_hub import list_repo_files

        files = list_repo_files(repo_id)
    except Exception:  # offline: the cached snapshot (if any) is used as it is
        return None
    if any(f.endswith(".safetensors") for f in files):
        return ["*.bin", "*.h5", "*.msgpack", "*.ckpt", "*.onnx", "*.ot"]
    return None


def _download_url(url: str) -> Path:
    target = cache_dir() / re.sub(r"[^\w.-]", "_", url.split("://", 1)[1])[-200:]
    if target.exists():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise WeightsNotFoundError(
            f"cannot download {url} (offline: HF_HUB_OFFLINE is set); download it yourself and give its local path "
            "instead"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        from torch.hub import download_url_to_file

        download_url_to_file(url, str(target), progress=True)
    except Exception as err:
        raise WeightsNotFoundError(
            f"cannot download {url} ({type(err).__name__}); download it yourself and give its local path instead"
        ) from err
    return target
