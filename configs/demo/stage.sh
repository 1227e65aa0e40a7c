#!/usr/bin/env bash
# Rebuild the demo world one resumable stage at a time; each stage fits one GPU command (under 8 minutes).
#   bash configs/demo/stage.sh STAGE [OUT]
# Stages, in order (run a training stage again to train it further: it resumes from its last.ckpt):
#   speech_codec  build the espeak-ng corpus if missing; train the speech codec (configs/demo/speech_codec.yaml)
#   speech_codec_refine  corpus; the shipped codec (stage speech_codec, then `python -m anygpt.demo.ship --parts
#                 speech_codec --clips 0`) trained on at lr 3e-4, cosine over 2500 steps, with fresh optimizer state;
#                 the first run keeps the speech_codec run as runs/demo/speech_codec_first, later runs resume.
#                 DEMO_MINUTES defaults to 3.67 here. Ship it the same way
#   speech_decoder  corpus; fine-tune the shipped codec's decoder for the round trip, encoder and codes frozen
#                 (configs/demo/speech_decoder.yaml); ship it with `python -m anygpt.demo.ship --parts speech_decoder`
#   soundstorm    corpus; train SoundStorm (configs/demo/soundstorm.yaml) on the codec's codes
#   tokenize      corpus; its RVQ-1 token shards by the codec, data/demo/shards/{train,val}
#                 (configs/demo/tokenize_speech.yaml; one file at a time: CPU machines do it too, ~7 items/s a core;
#                 DEMO_PARTS runs side by side, default 1).
#                 Finished shards are kept, so a stopped run goes on where it stopped; DEMO_RETOKENIZE=1 starts over
#                 (after the codec's encoder changed: the speech_decoder stage leaves the codes as they were)
#   music_codec   part 2: the melody corpus (anygpt.demo.melodies) if missing; train the music codec
#                 (configs/demo/music_codec.yaml)
#   image_vae     part 2: the scene corpus (anygpt.demo.scenes) if missing; train the image decoder's VAE
#                 (configs/demo/image_vae.yaml)
#   image_teacher part 2: the scene corpus if missing; train the image codec's semantic teacher, a small CLIP on the
#                 scene captions (configs/demo/image_teacher.yaml); it exports runs/demo/image_teacher/clip
#   image_codec   part 2: the SEED-style image codec and its unCLIP UNet together (configs/demo/image_codec.yaml),
#                 on the VAE that image_vae exported (runs/demo/image_vae/diffusers), taught by that VAE's latent grid
#                 and image_teacher's CLIP embedding side by side; it exports
#                 runs/demo/image_codec/export
#   image_decoder part 2: the image codec's code decoder and UNet trained on with its codes frozen
#                 (configs/demo/image_decoder.yaml, from runs/demo/image_codec/export): the image tokens, and an LM
#                 trained on them, stay valid; it exports runs/demo/image_decoder/export
#   tokenize_image, tokenize_music  part 2: the scene / melody corpus as token shards with captions,
#                 data/demo/shards_{image,music}/{train,val} (configs/demo/tokenize_{image,music}.yaml: the shipped
#                 codecs of anygpt/demo/weights, so the LM learns the codes that the shipped half-precision codecs make)
#   lm            the text tokenizer (runs/demo/tokenizer), the voice-prompt records (data/demo/voice_records, from
#                 the shards: anygpt.demo.voice_records) and the chat records (data/demo/chat, from the image and music
#                 shards: anygpt.demo.chat_records; the codes of their spoken turns are kept in
#                 data/demo/chat/speech_codes.jsonl.gz, which a rebuild reuses without espeak-ng: after the image
#                 codec changed, delete the records, not the cache); train the LM on every direction and the chat
#                 (configs/demo/lm.yaml)
# Part 2 in three steps, each shipping or packing what the next one reads (the GPU ones under 30 minutes):
#   part2_image   the scene corpus, the image VAE (DEMO_VAE_MINUTES, default 3.5) and teacher (DEMO_TEACHER_MINUTES,
#                 default 4) where not yet exported, the image codec (DEMO_IMAGE_MINUTES, default 12) and the image
#                 decoder (DEMO_DECODER_MINUTES, default 5) one after the other, then ships the image codec into
#                 OUT/weights (or anygpt/demo/weights): about 22-30 minutes; OUT also gets part2_image_runs.tgz, the
#                 metrics, the whole VAE and the teacher (benchmarks/demo_image_codec.py --vae and --clip read them)
#   image_vae_encoder  part 2: a fresh encoder for the shipped decoder's VAE (which ships without one), its
#                 decoder frozen (configs/demo/image_vae_encoder.yaml); exports runs/demo/image_vae/diffusers
#   image_decoder_refine  the shipped image decoder (anygpt/demo/weights/image_codec) trained on with its codes
#                 frozen, as stage image_decoder but started from the shipped files, on the denoising loss alone (the
#                 teachers need not be there), with the VAE of runs/demo/image_vae/diffusers (stage image_vae, or
#                 stage image_vae_encoder for DEMO_ENCODER_MINUTES, default 2.5, where it is missing) for
#                 DEMO_DECODER_MINUTES (default 15; DEMO_DECODER_STEPS, default 8000, sets its cosine); ships
#                 image_decoder. The image tokens stay as they are, so it may run beside part2_lm on the same GPU
#                 (with another OUT)
#   part2_data    every input of the LM: the speech, melody and scene corpora side by side, their token shards by
#                 the shipped codecs (the speech and the music in DEMO_PARTS runs sharing the GPU, default 8: their
#                 codecs encode one clip at a time, ~40 and ~24 items/s on the H200, ~28 and ~10 on 2 CPU cores) and
#                 the chat and voice-prompt records; then data/demo_lm_inputs.txz (~9 MB), which part2_lm unpacks:
#                 build it on a CPU machine and carry it, so that the GPU's time goes to the LM
#   part2_lm      part2_data where its inputs are missing (unpacking data/demo_lm_inputs.txz first where there is
#                 one), then stage lm (DEMO_MINUTES, default 20); ships the LM into OUT/weights (or
#                 anygpt/demo/weights). Without the espeak-ng wheel (the GPU image) the text tokenizer and the voice
#                 records still need its voice names: ESPEAK_DATA_PATH=DIR with a copy of its voices/!v in DIR/voices
#   part2_lease   what part 2 still needs, in one GPU lease of DEMO_LEASE_MINUTES (default 25) from the stage's
#                 start: part2_data where the LM's inputs are missing (data/demo_lm_inputs.txz unpacked first where
#                 there is one), then part2_lm for the minutes left less 2 (its export and shipping), its cosine
#                 fitted to them (DEMO_LM_STEPS_PER_MINUTE, default 1100: 7000 steps took 6.1 min beside
#                 image_decoder_refine on one H200; alone, part2_lm ran ~1600 a minute); beside them
#                 image_decoder_refine. With OUT:
#                 OUT/lm/weights.tar and OUT/dec/weights.tar; logs in runs/demo/{lease,refine}.log.
#                 DEMO_LM_ARGS adds arguments to the LM's fit alone: `--model.backbone anygpt/demo/weights/lm`
#                 trains the shipped LM on (its int8 weights, dequantized) instead of a fresh one
# A split whose finished shards already hold every line of its manifest is not tokenized again (whatever their size).
# With OUT, part2_image, image_decoder_refine and part2_lm also write OUT/weights.tar (the shipped folders).
# Each stage needs the files of the stages before it: after speech_codec, `python -m anygpt.demo.ship --parts
# speech_codec --clips 0` writes anygpt/demo/weights/speech_codec.safetensors, which soundstorm and tokenize read
# (the codes the shipped half-precision codec makes); lm needs data/demo/shards.
# With OUT, the stage's last.ckpt is also copied there in 15 MiB parts (<name>.ckpt.part-aa, -ab, ...: join them with
# cat), with its metrics and the corpus summary; tokenize writes shards.tar (unpack it in the repository root).
# DEMO_MINUTES (default 7) bounds each fit; DEMO_SEED (default 0) seeds the corpus; DEMO_TRAIN (default 60000) sets
# its training utterances (a smaller corpus is a prefix of the larger one's training split); DEMO_CHAT (default
# 12000) the training conversations, DEMO_SCENES and DEMO_MELODIES (30000, 12000) the training scenes and melodies.
# Tokenizers side by side share the cores (DEMO_THREADS torch threads each, default the cores over the runs).
# DEMO_FIT_ARGS adds arguments to every fit: a quick rehearsal of a chain on the
# CPU, e.g. DEMO_TRAIN=300 DEMO_CHAT=300 DEMO_FIT_ARGS="--trainer.max_steps 2 --trainer.val_check_interval 2
# --trainer.limit_val_batches 1 --trainer.precision 32" bash configs/demo/stage.sh part2_image.
set -euo pipefail
stage=${1:?usage: stage.sh STAGE [OUT]}
out=${2:-}
seed=${DEMO_SEED:-0}
minutes=${DEMO_MINUTES:-7}
train=${DEMO_TRAIN:-60000}

corpus() {
  [ -f data/demo/speech/corpus.json ] || python -m anygpt.demo.speech_corpus data/demo/speech --seed "$seed" \
    --train "$train" --val 500 --test 500
}

melodies() {  # part 2's music corpus (anygpt.demo.melodies): 12000 (DEMO_MELODIES) + 300 + 300 melodies
  [ -f data/demo/music/corpus.json ] || python -m anygpt.demo.melodies data/demo/music --seed "$seed" \
    --workers "$(nproc)" --train "${DEMO_MELODIES:-12000}"
}

scenes() {  # part 2's picture corpus (anygpt.demo.scenes): 30000 (DEMO_SCENES) + 500 + 500 scenes; one writer at a
  # time (stage part2_lease draws them for part2_data and image_decoder_refine side by side)
  mkdir -p data/demo
  (
    flock 9
    [ -f data/demo/images/corpus.json ] || python -m anygpt.demo.scenes data/demo/images --seed "$seed" \
      --train "${DEMO_SCENES:-30000}"
  ) 9> data/demo/.scenes.lock
}

fit() {  # fit CONFIG NAME [ARGS]: train $minutes more, resuming from runs/demo/NAME/last.ckpt if there is one
  local resume=() limit
  [ -f "runs/demo/$2/last.ckpt" ] && resume=(--ckpt_path "runs/demo/$2/last.ckpt")
  # max_time counts the training time of earlier stages too (the checkpoint's Timer state): add this stage's share
  limit=$(python - "runs/demo/$2/last.ckpt" "$minutes" <<'PY'
import os, sys, torch
done = 0.0
if os.path.isfile(sys.argv[1]):
    timer = torch.load(sys.argv[1], map_location="cpu", weights_only=False).get("callbacks", {}).get("Timer", {})
    done = timer.get("time_elapsed", {}).get("train", 0.0)
total = int(done + 60 * float(sys.argv[2]))
print(f"{total // 86400:02d}:{total % 86400 // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}")
PY
)
  # shellcheck disable=SC2086  # DEMO_FIT_ARGS: extra fit arguments for every stage, split on spaces
  python -m anygpt fit --config "$1" --trainer.max_time "$limit" "${resume[@]}" "${@:3}" ${DEMO_FIT_ARGS:-}
}

tokenize() {  # tokenize MODALITY CORPUS SHARDS [PARTS]: data/demo/CORPUS/{train,val}.jsonl -> data/demo/SHARDS/{...}
  local parts=${4:-1} i
  for split in train val; do
    tokenized "data/demo/$3/$split" "data/demo/$2/$split.jsonl" && continue
    for ((i = 0; i < parts; i++)); do  # PARTS runs side by side, each on every PARTS-th shard (data.part)
      OMP_NUM_THREADS=$(threads "$parts") python -m anygpt tokenize --config "configs/demo/tokenize_$1.yaml" \
        --data.manifest "data/demo/$2/$split.jsonl" \
        --data.output_dir "data/demo/$3/$split" $([ "$parts" = 1 ] || echo "--data.part $i/$parts") &
    done
    wait_all
  done
}

threads() {  # threads RUNS: torch threads for each of RUNS processes side by side (DEMO_THREADS, else the cores
  # shared out): torch gives every process a thread per core, and 20 tokenizers of 16 threads each on 16 cores ran
  # ten times slower than one thread each
  echo "${DEMO_THREADS:-$(( $(nproc) / $1 > 0 ? $(nproc) / $1 : 1 ))}"
}

tokenized() {  # tokenized SHARDS MANIFEST: whether the finished shards in SHARDS hold every line of MANIFEST
  python - "$1" "$2" <<'PY'
import glob, json, sys
records = sum(json.load(open(meta))["records"] for meta in glob.glob(f"{sys.argv[1]}/*.meta.json"))
with open(sys.argv[2], encoding="utf-8") as manifest:
    sys.exit(0 if records == sum(1 for line in manifest if line.strip()) else 1)
PY
}

lm_inputs() {  # whether the shards and chat records of configs/demo/lm.yaml are there (stage lm makes the rest)
  local path
  for path in data/demo/{shards,shards_image,shards_music}/{train,val} data/demo/chat/{train,val}.jsonl; do
    [ -e "$path" ] || return 1
  done
}

lm_data() {  # the LM's inputs where missing: data/demo_lm_inputs.txz unpacked if there is one, else part2_data
  if ! lm_inputs && [ -f data/demo_lm_inputs.txz ]; then tar -xJf data/demo_lm_inputs.txz; fi
  lm_inputs || bash "$0" part2_data
}

voice_records() {  # the voice-prompt records of both splits, where missing (from the speech shards)
  local split
  for split in train val; do
    [ -f "data/demo/voice_records/$split.jsonl" ] || python -m anygpt.demo.voice_records "data/demo/shards/$split" \
      "data/demo/voice_records/$split.jsonl" --split "$split" --seed "$seed" --train "$train"
  done
}

ship_tar() {  # ship_tar PART...: ship PARTs into OUT/weights (or anygpt/demo/weights); with OUT, also OUT/weights.tar
  python -m anygpt.demo.ship runs/demo "${out:-anygpt/demo}/weights" --clips 0 --parts "$@"
  [ -z "$out" ] || tar -cf "$out/weights.tar" -C "$out" weights
}

wait_all() {  # wait for every background job; fail if one failed
  local job failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return "$failed"
}

chat() {  # the chat records of both splits, where missing (their spoken turns: espeak-ng and the speech codec)
  local split count
  for split in train val; do
    count=${DEMO_CHAT:-12000}; [ "$split" = val ] && count=200
    [ -f "data/demo/chat/$split.jsonl" ] || python -m anygpt.demo.chat_records "data/demo/chat/$split.jsonl" \
      --split "$split" --count "$count" --images "data/demo/shards_image/$split" \
      --music "data/demo/shards_music/$split" --seed "$seed" --workers "$(nproc)" \
      --speech-cache data/demo/chat/speech_codes.jsonl.gz
  done
}

pack() {  # pack NAME: last.ckpt in parts and the CSV metrics into OUT
  [ -n "$out" ] || return 0
  mkdir -p "$out"
  split -b 15M "runs/demo/$1/last.ckpt" "$out/$1.ckpt.part-"
  cp "runs/demo/$1_logs/version_0/metrics.csv" "$out/$1_metrics.csv" 2>/dev/null || true
  cp data/demo/speech/corpus.json "$out/corpus.json" 2>/dev/null || true
}

case "$stage" in
  speech_codec) corpus; fit configs/demo/speech_codec.yaml speech_codec; pack speech_codec ;;
  speech_codec_refine)
    corpus; minutes=${DEMO_MINUTES:-3.67}
    if [ ! -d runs/demo/speech_codec_first ]; then
      mv runs/demo/speech_codec runs/demo/speech_codec_first
      mv runs/demo/speech_codec_logs runs/demo/speech_codec_first_logs
    fi
    fit configs/demo/speech_codec.yaml speech_codec --model.init_args.codec.checkpoint \
      anygpt/demo/weights/speech_codec.safetensors --model.init_args.optimizer.init_args.lr 3.0e-4 \
      --model.init_args.lr_scheduler.init_args.T_max 2500 --trainer.val_check_interval 500
    pack speech_codec ;;
  speech_decoder) corpus; fit configs/demo/speech_decoder.yaml speech_decoder; pack speech_decoder ;;
  soundstorm) corpus; fit configs/demo/soundstorm.yaml soundstorm; pack soundstorm ;;
  tokenize)
    corpus; if [ "${DEMO_RETOKENIZE:-0}" = 1 ]; then rm -rf data/demo/shards; fi
    tokenize speech speech shards "${DEMO_PARTS:-1}"
    [ -z "$out" ] || tar -cf "$out/shards.tar" data/demo/shards ;;
  lm)
    [ -d runs/demo/tokenizer ] || python -m anygpt.demo.text_tokenizer runs/demo/tokenizer --seed "$seed"
    # shellcheck disable=SC2086  # DEMO_LM_ARGS: extra arguments of the LM's fit alone, split on spaces
    voice_records; chat; fit configs/demo/lm.yaml lm ${DEMO_LM_ARGS:-}; pack lm ;;
  music_codec) melodies; fit configs/demo/music_codec.yaml music_codec; pack music_codec ;;
  image_vae) scenes; fit configs/demo/image_vae.yaml image_vae; pack image_vae ;;
  image_teacher) scenes; fit configs/demo/image_teacher.yaml image_teacher; pack image_teacher ;;
  image_codec) scenes; fit configs/demo/image_codec.yaml image_codec; pack image_codec ;;
  image_decoder) scenes; fit configs/demo/image_decoder.yaml image_decoder; pack image_decoder ;;
  tokenize_image)
    scenes; tokenize image images shards_image
    [ -z "$out" ] || tar -cf "$out/shards_image.tar" data/demo/shards_image ;;
  tokenize_music)
    melodies; tokenize music music shards_music
    [ -z "$out" ] || tar -cf "$out/shards_music.tar" data/demo/shards_music ;;
  part2_image)
    scenes
    [ -f runs/demo/image_vae/diffusers/config.json ] || minutes=${DEMO_VAE_MINUTES:-3.5} fit configs/demo/image_vae.yaml image_vae
    [ -f runs/demo/image_teacher/clip/config.json ] || minutes=${DEMO_TEACHER_MINUTES:-4} fit \
      configs/demo/image_teacher.yaml image_teacher
    minutes=${DEMO_IMAGE_MINUTES:-12} fit configs/demo/image_codec.yaml image_codec
    minutes=${DEMO_DECODER_MINUTES:-5} fit configs/demo/image_decoder.yaml image_decoder
    # image_decoder writes over image_codec's folder; shipping both records both runs in parts.json for the card
    ship_tar image_codec image_decoder
    if [ -n "$out" ]; then
      shopt -s nullglob; metrics=(runs/demo/image_*_logs/version_0/metrics.csv); shopt -u nullglob
      tar -czf "$out/part2_image_runs.tgz" "${metrics[@]}" data/demo/images/corpus.json runs/demo/image_vae/diffusers \
        runs/demo/image_teacher/clip
    fi ;;
  image_vae_encoder) scenes; fit configs/demo/image_vae_encoder.yaml image_vae_encoder; pack image_vae_encoder ;;
  image_decoder_refine)
    scenes
    [ -f runs/demo/image_vae/diffusers/config.json ] || minutes=${DEMO_ENCODER_MINUTES:-2.5} fit \
      configs/demo/image_vae_encoder.yaml image_vae_encoder
    shipped=anygpt/demo/weights/image_codec
    minutes=${DEMO_DECODER_MINUTES:-15} fit configs/demo/image_decoder.yaml image_decoder \
      --model.init_args.codec.quantizer "$shipped/seed_quantizer.pt" --model.init_args.codec.visual \
      "$shipped/eva_vit_g.pth" --model.init_args.decoder.source "$shipped/decoder" --model.init_args.embedder null \
      --model.init_args.decoder.vae runs/demo/image_vae/diffusers --trainer.max_steps "${DEMO_DECODER_STEPS:-8000}"
    ship_tar image_decoder ;;
  part2_data)
    mkdir -p runs/demo
    (corpus && tokenize speech speech shards "${DEMO_PARTS:-8}") > runs/demo/speech.log 2>&1 &
    (  # the chat records, beside the speech shards: their spoken turns also go through the speech codec one by one
      (melodies && tokenize music music shards_music "${DEMO_PARTS:-8}") > runs/demo/music.log 2>&1 &
      (scenes && tokenize image images shards_image) > runs/demo/image.log 2>&1 &
      wait_all && chat
    ) > runs/demo/chat.log 2>&1 &
    wait_all || { tail -n 5 runs/demo/{speech,music,image,chat}.log >&2; exit 1; }
    voice_records  # seconds from the shards: stage lm rebuilds them rather than carry 140 MB
    tar -cJf data/demo_lm_inputs.txz data/demo/{shards,shards_image,shards_music} data/demo/chat/{train,val}.jsonl ;;
  part2_lm)
    export DEMO_MINUTES=${DEMO_MINUTES:-20}
    lm_data
    bash "$0" lm
    ship_tar lm ;;
  part2_lease)
    started=$(date +%s)
    mkdir -p runs/demo
    bash "$0" image_decoder_refine ${out:+"$out/dec"} > runs/demo/refine.log 2>&1 &  # its scenes() waits on the lock
    {
      lm_data
      left=$(python3 -c "import time
print(round(max(3.0, ${DEMO_LEASE_MINUTES:-25} - 2 - (time.time() - $started) / 60), 2))")
      steps=$(python3 -c "print(int($left * ${DEMO_LM_STEPS_PER_MINUTE:-1100}))")
      echo "part2_lease: the LM gets $left minutes, a cosine over $steps steps"
      DEMO_MINUTES=$left DEMO_FIT_ARGS="${DEMO_FIT_ARGS:-} --model.lr_scheduler.init_args.total_steps $steps \
        --trainer.max_steps $steps" bash "$0" part2_lm ${out:+"$out/lm"}
    } > runs/demo/lease.log 2>&1
    wait_all || { tail -n 5 runs/demo/{lease,refine}.log >&2; exit 1; } ;;
  *) echo "stage.sh: unknown stage '$stage'" >&2; exit 2 ;;
esac
