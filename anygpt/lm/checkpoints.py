"""Lightning checkpoints of ``UnifiedLM``: read one (a file, or a folder of distributed shards) and rebuild the model.

A fit writes a single ``.ckpt`` file, or, with ``ModelParallelStrategy`` / FSDP and ``state_dict_type: sharded``, a
folder in the ``torch.distributed.checkpoint`` format (``.metadata`` + ``*.distcp`` shards) beside Lightning's
``meta.pt`` (hyper-parameters, loops, callbacks). Both read on the CPU in one process.
"""

from __future__ import annotations

import inspect
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from anygpt import AnyGPTError
from anygpt.messages import one_line

_META = "meta.pt"  # Lightning's file of everything but the weights and optimizer states, in a sharded folder
_WEIGHT_KEYS = ("state_dict", "model")  # the weights' key: ModelParallelStrategy's, then FSDPStrategy's
_NOT_MODEL_ARGS = ("optimizer", "lr_scheduler")  # fit-only; a rebuilt model exports or predicts


def read_checkpoint(path: str | os.PathLike, optimizer_states: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a Lightning fit of ``UnifiedLM``, on the CPU.

    Args:
        path: A checkpoint file, or a folder of distributed shards (``.metadata``, ``*.distcp``, ``meta.pt``).
        optimizer_states: Also read a sharded folder's optimizer states (``optimizer_0``, ...); they are not needed
            to rebuild the model, and are as large as the weights or larger. A file is always read whole.

    Returns:
        The checkpoint with ``state_dict`` (the module's weights) and ``hyper_parameters``.

    Raises:
        AnyGPTError: The path is missing, is a folder that is not a distributed checkpoint, has a missing or
            damaged shard, or is not a Lightning checkpoint of ``UnifiedLM`` (one line naming the path).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise AnyGPTError(f"checkpoint {path} does not exist")
    checkpoint = _read_folder(path, optimizer_states) if path.is_dir() else _read_file(path)
    if not isinstance(checkpoint, dict):
        raise AnyGPTError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    if "state_dict" not in checkpoint and isinstance(checkpoint.get("model"), dict):
        checkpoint["state_dict"] = checkpoint.pop("model")  # FSDPStrategy's key in a sharded folder
    missing = [key for key in ("state_dict", "hyper_parameters") if not isinstance(checkpoint.get(key), dict)]
    if missing:
        where = f" ({_META} of the folder)" if path.is_dir() and "hyper_parameters" in missing else ""
        raise AnyGPTError(f"{path} is not a Lightning checkpoint of UnifiedLM: no {' and no '.join(missing)}{where}")
    return checkpoint


def _read_file(path: Path) -> Any:
    try:
        is_zip = zipfile.is_zipfile(path)  # torch.save's format
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04" and not is_zip:
                raise AnyGPTError(f"cannot read checkpoint {path}: it is truncated or damaged (an incomplete zip)")
        # Our own fit's files: they pickle more than tensors (loops, callbacks), hence weights_only=False. A zip is
        # memory-mapped, so the weights are not held twice.
        return torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
    except AnyGPTError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise AnyGPTError(f"cannot read checkpoint {path} ({one_line(err, with_type=True)})") from None


def check_sharded_folder(folder: Path) -> None:
    """Check that a distributed-checkpoint folder has its ``.metadata`` and every shard it names, whole.

    Raises:
        AnyGPTError: No ``.metadata``, a bad one, or a missing or truncated shard (one line naming it).
    """
    from torch.distributed.checkpoint import FileSystemReader

    if not (folder / ".metadata").is_file():
        raise AnyGPTError(f"{folder} is a folder but not a distributed checkpoint (it has no .metadata file)")
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as err:  # noqa: BLE001
        raise AnyGPTError(f"cannot read the distributed checkpoint {folder}: bad .metadata "
                          f"({one_line(err, with_type=True)})") from None
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = folder / name
        if not shard.is_file():
            raise AnyGPTError(f"distributed checkpoint {folder}: the shard {name} is missing ({len(ends)} shards)")
        if shard.stat().st_size < end:
            raise AnyGPTError(f"distributed checkpoint {folder}: the shard {name} is truncated "
                              f"({shard.stat().st_size} of at least {end} bytes)")


def _read_folder(folder: Path, optimizer_states: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    check_sharded_folder(folder)
    reader = FileSystemReader(folder)
    checkpoint: dict[str, Any] = {}
    keys = None if optimizer_states else set(_WEIGHT_KEYS)
    try:
        # As Lightning's _load_distributed_checkpoint (the public load() fills a copy of the dict), weights only.
        _load_state_dict(checkpoint, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - CheckpointException is a BaseException
        failures = getattr(err, "failures", None)
        cause = next(iter(failures.values()))[0] if failures else err  # the reader's own error, not the wrapper's
        raise AnyGPTError(f"cannot read the distributed checkpoint {folder}: a shard is damaged or unreadable "
                          f"({one_line(cause, with_type=True).split('. ')[0]})") from None
    if (folder / _META).is_file():
        checkpoint.update(_read_file(folder / _META))
    return checkpoint


def model_from_checkpoint(path: str | os.PathLike, **overrides: Any):
    """Rebuild the ``UnifiedLM`` of a checkpoint, weights loaded, in eval mode on the CPU.

    The model is built from the checkpoint's ``hyper_parameters`` (its backbone, tokenizer and codec specs) less the
    fit-only ones (optimizer, scheduler, ``compile``, gradient checkpointing); ``overrides`` replace any of them
    (``backbone=...``). The
    weights go through the module's own ``on_load_checkpoint`` (which fills in the codec weights, or the frozen
    weights of a LoRA checkpoint) and then ``load_state_dict``.

    Args:
        path: A checkpoint file or distributed-checkpoint folder (see ``read_checkpoint``).
        **overrides: ``UnifiedLM`` arguments that replace the checkpoint's.

    Raises:
        AnyGPTError: The checkpoint cannot be read, names arguments that ``UnifiedLM`` does not take, or its
            tensors do not fit the model (one line naming the checkpoint and the first offending key).
    """
    from anygpt.lm.unified import UnifiedLM

    checkpoint = read_checkpoint(path)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items()
               if not k.startswith("_") and k not in _NOT_MODEL_ARGS}  # "_instantiator": LightningCLI's own
    hparams.update(compile=False, gradient_checkpointing=False)
    hparams.update(overrides)
    params = inspect.signature(UnifiedLM.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(hparams) - set(params))
        if unknown:
            raise AnyGPTError(f"checkpoint {path}: UnifiedLM takes no argument {', '.join(unknown)} "
                              "(a checkpoint of another model or version?)")
    model = UnifiedLM(**hparams)
    try:
        model.on_load_checkpoint(checkpoint)  # also checks every tensor's shape against the model's
    except AnyGPTError as err:
        raise AnyGPTError(f"checkpoint {path}: {err}") from None
    result = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if model.strict_loading and (result.missing_keys or result.unexpected_keys):
        parts = [f"{len(keys)} {kind} keys (first: {keys[0]})" for kind, keys in
                 (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        raise AnyGPTError(f"checkpoint {path} does not fit the model: {', '.join(parts)}")
    return model.eval()
