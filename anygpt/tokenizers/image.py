"""Image codec: SEED-2 (``AILab-CVC/seed-tokenizer-2``), 32 causal codes of 8192 per image; SD-2.1-unCLIP back.

Encoding squashes the RGB image to 224x224 (PIL bicubic), normalises it with the CLIP mean and std, runs EVA
ViT-g, the causal Q-Former and the VQ (seed §1). Decoding maps the 32 codes to a 1024-d CLIP-like image
embedding and hands it to an ``UnCLIPDecoder`` (seed §2).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from anygpt import AnyGPTError
from anygpt.messages import describe_source, one_line
from anygpt.tokenizers.base import BaseCodec
from anygpt.tokenizers.seed.model import SeedQuantizer, load_parts

if TYPE_CHECKING:
    from anygpt.decoders.unclip import UnCLIPDecoder

#: Sizes of the released tokenizer (seed §1, §4).
REAL_CONFIG: dict[str, Any] = dict(
    image_size=224, patch_size=14, vit_width=1408, vit_depth=39, vit_heads=16, vit_mlp_ratio=4.3637,
    qformer_hidden=768, qformer_layers=12, qformer_heads=12, qformer_intermediate=3072, cross_attention_freq=2,
    num_query_tokens=32, codebook_size=8192, codebook_dim=32, decode_depth=4, image_features_dim=1024,
)
#: The golden fixtures' small sizes, with the real 8192 codes (the LM vocabulary layout needs them): CPU-fast.
TINY_CONFIG: dict[str, Any] = dict(
    REAL_CONFIG, image_size=56, vit_width=64, vit_depth=2, vit_heads=4, qformer_hidden=96, qformer_layers=2,
    qformer_heads=4, qformer_intermediate=128, codebook_dim=8, decode_depth=2, image_features_dim=32,
)
QUANTIZER = "AILab-CVC/seed-tokenizer-2/seed_quantizer.pt"
VISUAL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
DECODER = "stabilityai/stable-diffusion-2-1-unclip"
#: OpenAI CLIP normalisation, as ``ImageTokenizer.processor``.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Images per forward pass in ``encode``.
ENCODE_BATCH = 64
_DTYPES = ("auto", "float32", "float16", "bfloat16")


class SeedImageCodec(BaseCodec):
    """Images as SEED-2 codes: 32 ids in ``[0, 8192)`` per image, written ``<soim><👀id>...<eoim>``.

    Args:
        quantizer: ``seed_quantizer.pt`` (the non-ViT part: a local file, URL or ``<owner>/<repo>/<file>``), a
            state dict in memory, or None for random weights. Its text-side tensors matching
            ``IGNORED_QUANTIZER_KEYS`` are skipped; anything else that does not fit is an error.
        visual: ``eva_vit_g.pth`` (the ViT, keys without prefix), a state dict, or None for random weights.
        decoder: An ``UnCLIPDecoder``, a diffusers repo id or folder to build one from, or None (encode only).
        config: Overrides of ``REAL_CONFIG``. ``cross_attention_freq`` is honoured (the reference always uses 2).
        dtype: ``auto`` runs as the original on CUDA (weights in float16, the ViT under float16 autocast) and in
            float32 elsewhere, decided at each call from the weights' device; the other choices force one dtype
            (``float32`` is pure float32 even on CUDA, where the original still autocasts the ViT). The weights
            are converted in place when needed, so going back from float16 to float32 keeps float16 values.
        max_pixels: Larger images (width x height) are refused before their pixels are decoded.
        seed: Seed of the random weights (used only for parts given as None).

    Raises:
        AnyGPTError: A weight file that is missing, unreadable or does not fit the config; a bad option; a
            decoder whose embedding width is not ``image_features_dim``.
    """

    modality = "image"
    token_prefix = "👀"
    start_tag = "<soim>"
    end_tag = "<eoim>"
    vocab_size = 8192
    span_length = 32

    def __init__(self, quantizer: str | dict | None = QUANTIZER, visual: str | dict | None = VISUAL,
                 decoder: UnCLIPDecoder | str | None = DECODER, config: dict | None = None,
                 dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto", max_pixels: int = 50_000_000,
                 seed: int = 0):
        super().__init__()
        cfg = check_config(config)
        if dtype not in _DTYPES:
            raise AnyGPTError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise AnyGPTError(f"max_pixels must be a positive int, got {max_pixels!r}")
        with torch.device("meta"):  # no random init of 1.15 B parameters that the files overwrite
            model = SeedQuantizer(**cfg)
        load_parts(model, _read_weights(quantizer, "quantizer"), _read_weights(visual, "ViT"), seed)
        self.model = model
        self.config = cfg
        self.dtype_choice = dtype
        self.max_pixels = max_pixels
        self.image_size = cfg["image_size"]
        self.vocab_size = cfg["codebook_size"]
        self.span_length = cfg["num_query_tokens"]
        if isinstance(decoder, (str, os.PathLike)):
            decoder = _unclip_class()(source=os.fspath(decoder))
        if decoder is not None and getattr(decoder, "embedding_dim", None) != cfg["image_features_dim"]:
            raise AnyGPTError(f"the image decoder takes {getattr(decoder, 'embedding_dim', None)}-d embeddings, "
                              f"but the SEED tokenizer makes {cfg['image_features_dim']}-d ones")
        self.decoder = decoder
        self.freeze()

    @classmethod
    def from_state_dicts(cls, quantizer_sd: dict, visual_sd: dict, **config: Any) -> SeedImageCodec:
        """A codec (without decoder) from state dicts in memory; ``config`` as ``REAL_CONFIG``'s keys.

        The model's tensors are the given ones (assigned, not copied) where they are float32 already.
        """
        return cls(quantizer=quantizer_sd, visual=visual_sd, decoder=None, config=config)

    @classmethod
    def from_pretrained(cls, quantizer: str = QUANTIZER, visual: str = VISUAL,
                        decoder: UnCLIPDecoder | str | None = None, **kw: Any) -> SeedImageCodec:
        """The released weights (or local copies): ``seed_quantizer.pt`` and ``eva_vit_g.pth``."""
        return cls(quantizer=quantizer, visual=visual, decoder=decoder, **kw)

    @classmethod
    def tiny(cls, decoder: UnCLIPDecoder | None = None, seed: int = 0, **kw: Any) -> SeedImageCodec:
        """Random weights, ``TINY_CONFIG`` sizes, with a tiny random ``UnCLIPDecoder`` unless one is given."""
        config = {**TINY_CONFIG, **(kw.pop("config", None) or {})}
        if decoder is None:
            decoder = _unclip_class().tiny(embedding_dim=config["image_features_dim"], seed=seed)
        return cls(quantizer=None, visual=None, decoder=decoder, config=config, seed=seed, **kw)

    # --- media ---

    def load(self, source: Any) -> Image.Image:
        """An image to encode as RGB: a path, bytes, a binary file object or a PIL image.

        Any mode PIL reads becomes RGB by ``Image.convert("RGB")``, as the original (alpha and palette
        transparency are dropped, 16-bit values are clipped at 255, CMYK uses PIL's formula; no EXIF rotation).

        Raises:
            AnyGPTError: Missing file, folder, empty or unreadable data, or more than ``max_pixels`` pixels
                (checked from the header, before the pixels are decoded). One line naming the source.
        """
        name = describe_source(source)
        if isinstance(source, Image.Image):
            self._check_size(source.size, name)
            return _to_rgb(source, name)
        stream = _open_source(source, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
                with Image.open(stream) as image:
                    self._check_size(image.size, name)
                    image.load()
                    return _to_rgb(image, name)
        except AnyGPTError:
            raise
        except Image.DecompressionBombError as err:
            raise AnyGPTError(f"the image {name} is too large ({err}); the limit is {self.max_pixels} pixels") from err
        except Exception as err:  # PIL raises many types for bad data: all end as one line
            raise AnyGPTError(f"cannot read the image {name}: {type(err).__name__}: {one_line(err)}") from err

    def _check_size(self, size: tuple[int, int], name: str) -> None:
        width, height = size
        if width * height > self.max_pixels:
            raise AnyGPTError(f"the image {name} is {width}x{height} = {width * height} pixels, over the limit of "
                              f"{self.max_pixels} (max_pixels)")

    def preprocess(self, images: list) -> Tensor:
        """Normalised pixels ``[B, 3, S, S]`` float32: RGB squashed to SxS (PIL bicubic), /255, CLIP mean/std."""
        size = self.image_size
        rows = []
        for item in images:
            if isinstance(item, Image.Image) and item.mode == "RGB":
                self._check_size(item.size, describe_source(item))
                rgb = item
            else:
                rgb = self.load(item)
            rows.append(torch.from_numpy(np.array(rgb.resize((size, size), Image.BICUBIC), dtype=np.uint8)))
        if not rows:
            return torch.empty(0, 3, size, size)
        pixels = torch.stack(rows).permute(0, 3, 1, 2).float().div(255)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return pixels.sub(mean).div(std)

    # --- network ---

    @property
    def weights_device(self) -> torch.device:
        """Where the tokenizer's weights are (the codec runs there)."""
        return self.model.query_tokens.device

    def compute_dtype(self) -> torch.dtype:
        """The dtype the network runs in now (``dtype`` resolved against the weights' device)."""
        if self.dtype_choice == "auto":
            return torch.float16 if self.weights_device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype_choice)

    def _ready(self) -> torch.dtype:
        dtype = self.compute_dtype()
        if self.model.query_tokens.dtype != dtype:
            with torch.inference_mode(False):
                self.model.to(dtype)
        return dtype

    def prequant(self, pixels: Tensor) -> Tensor:
        """The z fed to the VQ, ``[B, 32, codebook_dim]``, for preprocessed pixels ``[B, 3, S, S]``."""
        size = self.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"pixels must have shape [batch, 3, {size}, {size}], got {list(pixels.shape)}")
        dtype = self._ready()
        autocast = None if dtype == torch.float32 else dtype
        with torch.inference_mode():
            return self.model.prequant(pixels.to(self.weights_device, dtype), autocast)

    def quantize(self, z: Tensor) -> Tensor:
        """Nearest codes ``[B, 32]`` of z ``[B, 32, codebook_dim]`` (plain squared distance, no normalisation)."""
        with torch.inference_mode():
            return self.model.quantize(z)

    def encode(self, media_batch: list) -> list[Tensor]:
        """One LongTensor ``[32]`` of codes per image (paths, bytes, file objects or PIL images), batched."""
        if not media_batch:
            return []
        pixels = self.preprocess(media_batch)  # every image is read before any compute: bad input fails fast
        codes = torch.cat([self.quantize(self.prequant(chunk)).cpu() for chunk in pixels.split(ENCODE_BATCH)])
        return [row.clone() for row in codes]

    def codebook_entry(self, codes: Tensor) -> Tensor:
        """Image features ``[B, image_features_dim]`` (the unCLIP conditioning) of codes ``[B, 32]``.

        Raises:
            ValueError: Not integer ids of shape ``[B, 32]``, or an id outside ``[0, codebook_size)``.
        """
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"image codes must be integer ids, got {codes.dtype}")
        if codes.dim() != 2 or codes.shape[1] != self.span_length:
            raise ValueError(f"image codes must have shape [batch, {self.span_length}], got {list(codes.shape)}")
        bad = (codes < 0) | (codes >= self.vocab_size)
        if bad.any():
            raise ValueError(f"image code {int(codes[bad][0])} is outside [0, {self.vocab_size})")
        self._ready()
        with torch.inference_mode():
            return self.model.codebook_entry(codes.to(self.weights_device, torch.long))

    def decode(self, codes: list[Tensor], seeds: list[int | None] | None = None) -> list[Image.Image]:
        """Images for spans of 32 codes, through the unCLIP decoder (batched embedding, then the decoder).

        Args:
            codes: One 1-D tensor of 32 ids per image.
            seeds: Per image, the seed of the diffusion noise (None: the decoder's default).

        Raises:
            ValueError: A span that is not 32 ids in range, or ``seeds`` of another length.
            AnyGPTError: The codec has no decoder.
        """
        spans = [self.check_codes(c) for c in codes]
        if seeds is not None and len(seeds) != len(spans):
            raise ValueError(f"got {len(seeds)} seeds for {len(spans)} code sequences")
        if self.decoder is None:
            raise AnyGPTError("decoding images needs an UnCLIPDecoder; this SeedImageCodec has none (decoder=None)")
        if not spans:
            return []
        embeds = self.codebook_entry(torch.stack(spans))
        return self.decoder.decode(embeds.float(), seeds=seeds)


def check_config(config: dict | None) -> dict[str, Any]:
    """``REAL_CONFIG`` with ``config``'s overrides, checked; AnyGPTError (one line) for unknown or bad values."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(REAL_CONFIG))
    if unknown:
        raise AnyGPTError(f"unknown SEED tokenizer config keys: {', '.join(unknown)}")
    cfg = {**REAL_CONFIG, **config}
    for key, value in cfg.items():
        kind = float if key == "vit_mlp_ratio" else int
        if isinstance(value, bool) or not isinstance(value, (int, kind)) or value <= 0:
            raise AnyGPTError(f"SEED tokenizer config {key} must be a positive {kind.__name__}, got {value!r}")
    rules = [
        (cfg["image_size"] % cfg["patch_size"] == 0, "image_size must be a multiple of patch_size"),
        (cfg["vit_width"] % cfg["vit_heads"] == 0, "vit_width must be a multiple of vit_heads"),
        (cfg["qformer_hidden"] % cfg["qformer_heads"] == 0, "qformer_hidden must be a multiple of qformer_heads"),
        (cfg["qformer_hidden"] % 12 == 0, "qformer_hidden must be a multiple of 12 (the decoder blocks' heads)"),
    ]
    for ok, message in rules:
        if not ok:
            raise AnyGPTError(f"bad SEED tokenizer config: {message}")
    return cfg


def _read_weights(source: str | os.PathLike | dict | None, what: str) -> tuple[object, str] | None:
    """``(state dict, name for messages)`` of a weight file or an in-memory state dict; None stays None."""
    if source is None:
        return None
    if isinstance(source, dict):
        return source, f"the SEED {what} state dict"
    from anygpt.hub import resolve_file

    path = resolve_file(source)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), str(path)
    except Exception as err:
        raise AnyGPTError(f"cannot read the SEED {what} weights {path}: {type(err).__name__}: "
                          f"{one_line(err)}") from err


def _unclip_class():
    try:
        from anygpt.decoders.unclip import UnCLIPDecoder
    except ModuleNotFoundError as err:
        if err.name != "anygpt.decoders.unclip":
            raise
        raise AnyGPTError("decoding images needs anygpt.decoders.unclip, which this installation lacks") from err
    return UnCLIPDecoder


def _open_source(source: Any, name: str) -> Any:
    """Something ``Image.open`` takes, after the checks that give clearer messages than PIL's."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AnyGPTError("cannot read an image from empty bytes")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise AnyGPTError(f"no such image file: {name}")
        if path.is_dir():
            raise AnyGPTError(f"{name} is a folder, not an image file")
        if path.stat().st_size == 0:
            raise AnyGPTError(f"the image file {name} is empty (0 bytes)")
        return path
    if hasattr(source, "read"):
        return source
    raise AnyGPTError(f"cannot read an image from a {type(source).__name__} "
                      "(give a path, bytes, a binary file object or a PIL image)")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():  # float images (TIFF) can hold NaN
        raise AnyGPTError(f"the image {name} holds non-finite pixels (NaN or infinity)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "palette images with transparency ...": dropped, as PIL
            return image.convert("RGB")
    except Exception as err:
        raise AnyGPTError(f"cannot convert the image {name} ({image.mode}) to RGB: {one_line(err)}") from err
