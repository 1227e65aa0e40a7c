"""UnCLIPDecoder.decode speed at full size (SD 2.1 unCLIP architecture, random weights): seconds per image.

The full-size components are built from the configs of ``stabilityai/stable-diffusion-2-1-unclip`` (written out
below, since no weights can be downloaded): UNet 96x96 latents with a 2048-d projection class embedding, the SD-2
VAE (768x768 output), the OpenCLIP-H text encoder (1024 wide, 23 layers) and the released schedulers (PNDM,
v-prediction). Only the empty prompt is tokenized, so a tiny offline tokenizer stands in for the real one. Random
weights give meaningless (possibly NaN) pictures but the same work per step. Rows: batch 1 and 4 at 20 steps with
guidance 10 (a UNet batch of 2 and 8); median of ``--repeats`` timed decodes after one warm-up decode.

    python benchmarks/unclip_speed.py                        # CUDA, float16: prints a table, writes JSON
    python benchmarks/unclip_speed.py --device cpu --quick   # tiny components: a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch
from timing import median_time

from anygpt.decoders.unclip import UnCLIPDecoder

UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    class_embed_type="projection", projection_class_embeddings_input_dim=2048, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
    scaling_factor=0.18215, act_fn="silu", norm_num_groups=32)
TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1)
PNDM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="v_prediction", skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
IMAGE_NOISING = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def full_size_components(device: str) -> dict:
    """SD 2.1 unCLIP components with random weights, created on ``device`` in float32."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion import StableUnCLIPImageNormalizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET).eval()
        vae = AutoencoderKL(**VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=1024)
    tokenizer = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 2}, merges=[], model_max_length=77)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_normalizer=normalizer,
                image_noising_scheduler=DDPMScheduler(**IMAGE_NOISING), scheduler=PNDMScheduler(**PNDM))


def measure(decoder: UnCLIPDecoder, batch: int, repeats: int, device: str) -> dict:
    decoder.batch_size = batch
    embeds = torch.randn(batch, decoder.embedding_dim, generator=torch.Generator().manual_seed(batch))
    seeds = list(range(batch))
    seconds, images, peak = median_time(lambda: decoder.decode(embeds, seeds), device, repeats, warmup=1)
    return {"batch": batch, "seconds_per_batch": round(seconds, 4), "seconds_per_image": round(seconds / batch, 4),
            "images_per_s": round(batch / seconds, 3),
            "image_size": list(images[0].size[::-1]),
            "peak_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/unclip_speed.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="tiny random components: a smoke run of the script")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random weights may give NaN pixels

    start = time.perf_counter()
    if args.quick:
        decoder = UnCLIPDecoder.tiny(num_inference_steps=args.steps, dtype=args.dtype).to(args.device)
    else:
        decoder = UnCLIPDecoder(components=full_size_components(args.device), num_inference_steps=args.steps,
                                dtype=args.dtype)
    build_s = time.perf_counter() - start
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in decoder.named_children()}
    rows = [measure(decoder, batch, args.repeats, args.device) for batch in args.batches]

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
    import diffusers
    import transformers

    result = {
        "benchmark": "unclip_speed", "quick": args.quick, "device": args.device, "device_name": device_name,
        "dtype": str(decoder.unet.dtype).removeprefix("torch."), "steps": args.steps,
        "guidance_scale": decoder.guidance_scale, "build_s": round(build_s, 2), "params": params,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "rows": rows,
    }
    print(f"UnCLIPDecoder.decode, {'tiny' if args.quick else 'SD 2.1 unCLIP (random weights)'}, "
          f"{result['dtype']} on {device_name or args.device}, {args.steps} steps, median of {args.repeats}")
    print(f"{'batch':>5} {'size':>9} {'s/batch':>9} {'s/image':>9} {'images/s':>9} {'peak GiB':>9}")
    for row in rows:
        size = "x".join(map(str, row["image_size"]))
        print(f"{row['batch']:>5} {size:>9} {row['seconds_per_batch']:>9.3f} {row['seconds_per_image']:>9.3f} "
              f"{row['images_per_s']:>9.2f} {row['peak_gib'] if row['peak_gib'] is not None else '-':>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
