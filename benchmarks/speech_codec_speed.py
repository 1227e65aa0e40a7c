"""SpeechTokenizer encode / decode speed at full size (random weights), and the whole speech decode path.

Rows: encode of 10 s and 30 s of 16 kHz audio to RVQ-1 ids (what the LM reads), the 8-layer decode of 10 s and
30 s of codes to a waveform, and ``SpeechTokenizerCodec.decode`` end to end (SoundStorm fills RVQ 2-8 in 3 steps,
then the 8-layer decode), all in float32 with TF32 off, as the original ran them, and once more with SoundStorm in
bfloat16 (``decoder_dtype``). Median of ``--repeats`` timed
runs after warm-up, batch 1.

    python benchmarks/speech_codec_speed.py --device cuda          # prints a table, writes JSON
    python benchmarks/speech_codec_speed.py --device cpu --quick   # tiny sizes: a smoke run
"""

from __future__ import annotations

import argparse

import torch
from timing import device_name, write_json, seconds as median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny models and 1-s inputs (smoke run)")
    parser.add_argument("--out", default="benchmarks/results/speech_codec_speed.json")
    args = parser.parse_args()

    from anygpt.decoders.soundstorm import SoundStormDecoder
    from anygpt.tokenizers.speech import REAL_CONFIG, TINY_CONFIG, SpeechTokenizerCodec

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = dict(TINY_CONFIG if args.quick else REAL_CONFIG)
    decoder = SoundStormDecoder.tiny() if args.quick else SoundStormDecoder()
    codec = SpeechTokenizerCodec(config=config, checkpoint=None, decoder=decoder).to(args.device)
    seconds = [1, 2] if args.quick else [10, 30]
    rows = []
    for s in seconds:
        wav = torch.randn(1, 16000 * s, generator=torch.Generator().manual_seed(s)).clamp(-3, 3) * 0.1
        [ids] = codec.encode([(wav, 16000)])
        codes8 = torch.randint(0, 1024, (8, 1, ids.numel()), device=args.device)

        def decode8():
            with torch.inference_mode():
                codec.model.decode(codes8)

        rows.append({"what": "encode to RVQ-1 ids", "seconds": s,
                     "median_s": median_seconds(lambda: codec.encode([(wav, 16000)]), args.device, args.repeats)})
        rows.append({"what": "decode 8 layers", "seconds": s, "median_s": median_seconds(decode8, args.device, args.repeats)})
        rows.append({"what": "codec.decode (SoundStorm 3 steps + decode)", "seconds": s,
                     "median_s": median_seconds(lambda: codec.decode([ids], seeds=[0], steps=3), args.device, args.repeats)})
    codec.decoder.to(torch.bfloat16)  # what decoder_dtype="bfloat16" does
    for s in seconds:
        wav = torch.randn(1, 16000 * s, generator=torch.Generator().manual_seed(s)).clamp(-3, 3) * 0.1
        [ids] = codec.encode([(wav, 16000)])
        rows.append({"what": "codec.decode, SoundStorm in bfloat16", "seconds": s,
                     "median_s": median_seconds(lambda: codec.decode([ids], seeds=[0], steps=3), args.device, args.repeats)})
    for row in rows:
        row["real_time_factor"] = row["median_s"] / row["seconds"]

    print(f"{'what':<46} {'audio s':>8} {'median s':>10} {'RTF':>8}")
    for row in rows:
        print(f"{row['what']:<46} {row['seconds']:>8} {row['median_s']:>10.4f} {row['real_time_factor']:>8.4f}")
    result = {"benchmark": "speech_codec_speed", "device": device_name(args.device), "torch": torch.__version__,
              "dtype": "float32 (TF32 off)", "quick": args.quick, "repeats": args.repeats, "rows": rows}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
