"""UnifiedLM: the language model over text and modality tokens, composed with its codecs."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from anygpt import AnyGPTError
from anygpt.data.chat import Conversation
from anygpt.data.requests import Request
from anygpt.lm.chat_session import answer
from anygpt.lm.chat_turns import decode_span
from anygpt.lm.decoding.grammar import SpanGrammar
from anygpt.lm.decoding.loop import generate
from anygpt.lm.decoding.presets import GenerationPreset, build_presets
from anygpt.lm.fitting import FitHooks, token_cross_entropy
from anygpt.lm.lora import LoraSpec, add_lora
from anygpt.lm.examples import pretrain_example
from anygpt.lm.prompts import InstructionPools, base_prompt_ids
from anygpt.lm.tokenizer import TextTokenizer
from anygpt.tokenizers.vocab import SPECIALS, VocabLayout
from anygpt.tokenizers.base import check_span, complete_length, decode_options, encode_voice_prompt, instantiate


class UnifiedLM(FitHooks, LightningModule):
    """One causal LM that reads and writes text, speech, image and music tokens (AnyGPT).

    Codecs are registered in dict order after the role tokens. With a released tokenizer (AnyGPT-base) the
    layout is read from it and checked; with a plain text tokenizer the codec tokens are added and the
    backbone's embeddings are resized.

    Args:
        backbone: A HF causal LM (repo id or local folder, e.g. ``fnlp/AnyGPT-base``), or a dict of
            ``LlamaConfig`` fields for a freshly initialised model.
        tokenizer: Folder or repo id of the text tokenizer; None uses the backbone's folder; ``tiny`` trains a
            small SentencePiece tokenizer on built-in text (CPU tests and tiny configs).
        codecs: Modality name to codec (any object with the ``ModalityCodec`` interface).
        prompt_format: Prompt template: ``base`` is AnyGPT-base's ``[Human]: {instruction} {input}<eoh> [MMGPT]:``.
        generation: Per-target overrides of the sampling presets, e.g. ``{music: {top_k: 100}}``.
        instructions: JSON file of instruction pools (``{"from_text": {...}, "to_text": {...}}``); None uses the
            built-in phrasings.
        grammar: Constrain generated spans to what the target codec accepts.
        dtype: Weight dtype of the backbone, loaded or fresh (``float32``, ``bfloat16``, ``float16``).
        seed: Seed of a fresh backbone's initialisation and of requests that carry no seed.
        added_tokens: Plain tokens to add after the codec blocks where the tokenizer lacks them (SFT:
            ``["<-Res->", "<-Ins->"]``, ids 49418/49419 after AnyGPT-base's vocabulary); embeddings are resized.
        attn_implementation: The backbone's attention kernels (``packed``, ``sdpa``, ``flex_attention``,
            ``flash_attention_2``, ``eager``); None keeps transformers' choice. ``packed`` trains packed blocks with
            FlashAttention varlen kernels on CUDA (no dense mask, no work across documents) and is SDPA elsewhere.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30 % more compute):
            ``true`` every decoder layer, an integer ``k`` every k-th layer (selective: less recomputation for
            some more memory), ``false`` none.
        compile: ``torch.compile`` each decoder layer and the loss when fitting (a one-off warm-up of about a
            minute; faster steps).
        quantize: ``int8`` stores the backbone's linear weights in int8 with one scale per output row (torchao,
            ``pip install 'anygpt[quant]'``): a 7B backbone then needs ~7 GB instead of 13.5 GB. For prediction,
            chat and ``lora`` fits (QLoRA: the int8 weights stay frozen); decoding at batch 1 gets faster, larger
            batches slower (see benchmarks/generate_speed.py).
        lora: Fine-tune LoRA adapters instead of the whole backbone (through peft), e.g. ``{r: 16, alpha: 32,
            dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj],
            train_token_rows: true}`` (these are the defaults; ``{}`` takes them all). ``train_token_rows`` also
            trains the embedding and output rows of every id from the text vocabulary's size on (codec tokens,
            role and added tokens); the text rows stay frozen. Checkpoints hold the trained tensors only;
            ``merge_adapters()`` folds them into the base weights. None: every weight trains.
        optimizer: Optimizer factory for ``fit``; None is AdamW(lr=2e-5, weight_decay=0).
        lr_scheduler: Scheduler factory for ``fit``; None keeps the learning rate constant.
        voice_in_prompt: A text-to-X request with a voice prompt also shows the LM the prompt's level-1 codes
            (``... This is input: {text} Voice: <sosp>...<eosp><eoh> [MMGPT]:``), so a model trained on records
            with a ``voice_prompt`` span speaks in that voice; the second-stage decoder still gets the prompt as
            before. Off: AnyGPT's LM never sees the voice, and its released weights were not trained for it.
    """

    def __init__(
        self,
        backbone: str | dict = "fnlp/AnyGPT-base",
        tokenizer: str | None = None,
        codecs: dict[str, Any] | None = None,
        prompt_format: Literal["base"] = "base",
        generation: dict[str, dict] | None = None,
        instructions: str | None = None,
        grammar: bool = True,
        dtype: str = "float32",
        seed: int = 0,
        added_tokens: list[str] = [],
        attn_implementation: str | None = None,
        gradient_checkpointing: bool | int = False,
        compile: bool = False,
        quantize: Literal["int8"] | None = None,
        lora: dict[str, Any] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        voice_in_prompt: bool = False,
    ):
        super().__init__()
        # Keep configs, never module instances (they may be large, and some cannot be copied). Under the CLI,
        # Lightning saves the parsed config (codec specs), not the instances that reach this call.
        given = _cli_hparams() or {"codecs": codecs, "optimizer": optimizer, "lr_scheduler": lr_scheduler}
        ignore = [key for key in ("codecs", "optimizer", "lr_scheduler") if _holds_instances(given.get(key))]
        self.save_hyperparameters(ignore=ignore)
        codecs = {name: instantiate(spec) for name, spec in (codecs or {}).items()}
        for name, codec in codecs.items():
            if getattr(codec, "modality", None) != name:
                raise AnyGPTError(f"codecs.{name}: the codec's modality is {getattr(codec, 'modality', None)!r}")
            if name == "text":
                raise AnyGPTError("codecs.text: 'text' is the LM's own modality, not a codec")
        self.codecs = codecs
        self.codec_modules = nn.ModuleDict({k: v for k, v in codecs.items() if isinstance(v, nn.Module)})
        self.presets = build_presets(generation)
        self.instructions = InstructionPools.from_file(instructions) if instructions else InstructionPools()
        if prompt_format != "base":
            raise AnyGPTError(f"prompt_format {prompt_format!r} is not supported (choose 'base')")
        self.prompt_format, self.grammar, self.seed = prompt_format, grammar, seed
        self.voice_in_prompt = voice_in_prompt
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.lora = LoraSpec.parse(lora)

        if tokenizer is None and isinstance(backbone, dict):
            raise AnyGPTError("a backbone built from a config needs `tokenizer` (a folder, repo id or 'tiny')")
        self.tokenizer = TextTokenizer.tiny() if tokenizer == "tiny" else TextTokenizer.from_pretrained(tokenizer or backbone)
        self.added_tokens = list(added_tokens)
        self.layout = self._build_layout()
        self.backbone = self._build_backbone(backbone, dtype, attn_implementation)
        self.recompute_every = int(gradient_checkpointing)
        if self.recompute_every < 0:
            raise AnyGPTError(f"gradient_checkpointing must be true, false or k >= 1, got {gradient_checkpointing}")
        if self.recompute_every:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for index, layer in enumerate(getattr(getattr(self.backbone, "model", None), "layers", [])):
                layer.gradient_checkpointing = index % self.recompute_every == self.recompute_every - 1
        self.compile_training, self._loss_fn = compile, token_cross_entropy
        self.quantized = quantize
        if quantize:
            from anygpt.lm.decoding.quantize import quantize_backbone

            quantize_backbone(self.backbone, quantize)
        if self.lora:
            self.backbone = add_lora(self.backbone, self.lora, self.layout.base_size)
        self.reply_end_id = self.layout.token_id("<eos>")
        self.stop_ids = [self.reply_end_id, self.tokenizer.eos_id]
        self.metrics = nn.ModuleDict()

    def _build_layout(self) -> VocabLayout:
        vocab = self.tokenizer.get_vocab()
        if SPECIALS[0] in vocab:
            known = [c for c in self.codecs.values() if f"<{c.token_prefix}0>" in vocab]
            layout = VocabLayout.from_tokenizer(vocab, known)
        else:
            layout = VocabLayout(len(self.tokenizer))
        for codec in self.codecs.values():
            if codec.modality not in layout.ranges:
                codec.register(layout)
        for token in self.added_tokens:
            layout.add_token(token)
        self.tokenizer.add_tokens(layout.token_strings())
        if len(self.tokenizer) != len(layout):
            raise AnyGPTError(
                f"tokenizer holds {len(self.tokenizer)} tokens but the vocabulary layout needs {len(layout)}: "
                "it has added tokens that are not AnyGPT's"
            )
        return layout

    def _build_backbone(self, backbone: str | dict, dtype: str, attn_implementation: str | None) -> nn.Module:
        from transformers import AutoModelForCausalLM, LlamaConfig

        if attn_implementation == "packed":
            from anygpt.lm.packed_attention import register

            register()
        if isinstance(backbone, dict):
            config = LlamaConfig(**{**backbone, "vocab_size": len(self.layout)})
            if attn_implementation:
                config._attn_implementation = attn_implementation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        else:
            from anygpt.hub import resolve
            from anygpt.lm.int8_weights import is_int8, load_int8

            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            folder = resolve(backbone)
            if is_int8(folder):
                model = load_int8(folder, dtype=getattr(torch, dtype), **extra)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **extra)
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < len(self.layout):
            model.resize_token_embeddings(len(self.layout))
        return model

    # ----------------------------------------------------------------- prediction

    def predict_step(self, batch: list[Request], batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict]:
        """Answer a batch of requests (or of chat conversations); one that fails gets ``status: error`` and the
        rest go on."""
        if batch and isinstance(batch[0], Conversation):
            return answer(self, batch)
        responses, jobs = [], []
        for request in batch:
            response = {"index": request.index, "request": request.line, "source": request.source,
                        "target": request.target, "content": request.content, "status": "ok"}
            if request.voice_prompt:
                response["voice_prompt"] = request.voice_prompt
            responses.append(response)
            if request.error:
                response.update(status="error", error=request.error)
                continue
            try:
                jobs.append((request, response, *self._prepare(request, response)))
            except Exception as err:  # noqa: BLE001 - one bad request must not stop the batch
                _fail(response, request, err)
        if jobs:
            try:
                outputs = generate(self.backbone, [j[2] for j in jobs], [j[3] for j in jobs],
                                   [j[4] for j in jobs], [j[0].seed for j in jobs], pad_id=self.tokenizer.pad_id,
                                   unconditional=[j[6] for j in jobs])
            except Exception as err:  # noqa: BLE001
                for request, response, *_ in jobs:
                    _fail(response, request, err)
                return responses
            for (request, response, prompt, preset, grammar, options, _), generated in zip(jobs, outputs):
                try:
                    self._finish(request, response, generated, options)
                except Exception as err:  # noqa: BLE001
                    _fail(response, request, err)
        return responses

    def chat(self, conversation: Any, max_reply_tokens: int | None = None, drop_history: bool = True,
             stream: bool = False) -> dict | Iterator[dict]:
        """Reply to the last user turn of a conversation (earlier unanswered user turns get replies first).

        Args:
            conversation: A list of turns (``{"role", "text", "image": path, "speech": [paths], "speak"}``), a
                conversation object ``{"turns", "seed", "voice_prompt", "id"}``, its JSON, or a ``Conversation``.
            max_reply_tokens: Token budget of the reply; None: the ``chat`` preset's.
            drop_history: Drop the oldest exchanges if the context would overflow (else raise).
            stream: Return an iterator of events while the reply is generated (``anygpt.lm.chat_stream``: text
                deltas, audio chunks of speech, finished media spans, then ``done`` with the reply).

        Returns:
            The reply: ``text``, ``media`` (``[{modality, media, codes, sample_rate?}]``, in order), ``truncated``.

        Raises:
            AnyGPTError: The conversation is invalid or could not be answered (one line naming why).
        """
        from anygpt.data.chat import parse_conversation

        if not isinstance(conversation, Conversation):
            conversation = parse_conversation(conversation, 0, set(self.codecs))
        if conversation.seed is None:
            conversation.seed = self.seed
        if stream:
            from anygpt.lm.chat_stream import stream_chat

            return stream_chat(self, conversation, max_reply_tokens=max_reply_tokens, drop_history=drop_history)
        response = answer(self, [conversation], max_reply_tokens=max_reply_tokens, drop_history=drop_history)[0]
        if response["status"] != "ok":
            raise AnyGPTError(response["error"])
        return response["replies"][-1]

    def stream(self, request: str | dict | Request, index: int = 0) -> Iterator[dict]:
        """One predict request (a CLI line ``source|target|content[|voice]``, a record, or a ``Request``) as events
        while it is generated: ``text`` deltas, ``audio`` chunks of speech, the finished media span, then ``done``
        with the response ``predict`` gives (``anygpt.lm.chat_stream``)."""
        from anygpt.data.requests import parse_line, parse_record
        from anygpt.lm.chat_stream import stream_request

        if not isinstance(request, Request):
            request = parse_line(request, index) if isinstance(request, str) else parse_record(request, index)
        return stream_request(self, request)

    def _prepare(self, request: Request,
                 response: dict) -> tuple[list[int], GenerationPreset, SpanGrammar, dict, list[int] | None]:
        """The prompt, preset, grammar and decode options of a request, and the prompt without its text that
        classifier-free guidance contrasts it with (None where the target's preset is not guided)."""
        known = ["text", *self.codecs]
        for side in (request.source, request.target):
            if side not in known:
                raise AnyGPTError(f"unknown modality {side!r} (this model knows {', '.join(known)})")
        if request.seed is None:
            request.seed = self.seed + request.index
        rng = random.Random(request.seed)
        if request.source == "text":
            direction, modality = "from_text", request.target
        else:
            direction, modality = "to_text", request.source
        instruction = request.instruction or self.instructions.choose(direction, modality, rng)
        preset = self.presets.get(request.target, GenerationPreset())
        options = self._decode_options(request, preset)
        voice = self._voice_span(request.target, options) if self.voice_in_prompt else None
        unconditional = None
        if request.source == "text":
            prompt = base_prompt_ids(self.tokenizer, instruction, text=request.content, voice_ids=voice)
            if preset.guidance_scale != 1:
                unconditional = base_prompt_ids(self.tokenizer, instruction, text="", voice_ids=voice)
        else:
            span = self.layout.ranges[modality].span(self.codecs[modality].encode([request.content])[0])
            prompt = base_prompt_ids(self.tokenizer, instruction, span_ids=span)
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        if limit and len(prompt) + preset.max_new_tokens > limit:
            raise AnyGPTError(
                f"prompt of {len(prompt)} tokens + {preset.max_new_tokens} new tokens exceeds the model's "
                f"context of {limit}"
            )
        target = self.layout.ranges.get(request.target)
        space = self.tokenizer.space_id
        grammar = SpanGrammar(target, self.codecs.get(request.target), stop_ids=self.stop_ids,
                              lead_in_ids=[space] if space is not None else [], enforce=self.grammar,
                              min_new_tokens=preset.min_new_tokens, text_ranges=[(0, self.layout.base_size)])
        response.update(seed=request.seed, instruction=instruction, prompt_tokens=len(prompt))
        return prompt, preset, grammar, options, unconditional

    def _voice_span(self, target: str, options: dict) -> list[int] | None:
        """LM ids of the voice prompt's level-1 codes (tags included), from the prompt ``_decode_options``
        encoded for the target codec (all-level codes ``[T, levels]``); None without a prompt."""
        prompts = options.get("prompts")
        if not prompts or target not in self.layout.ranges:
            return None
        codes = prompts[0]
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point():
            raise AnyGPTError(f"voice_in_prompt: the {target} codec's encoded voice prompt is not a code table")
        return self.layout.ranges[target].span(codes[:, 0].cpu())

    def _decode_options(self, request: Request, preset: GenerationPreset) -> dict:
        """Keyword arguments of the target codec's ``decode`` for this request (those its signature takes).

        A voice prompt is read and encoded here, before generation, so a bad one fails the request early.
        """
        codec = self.codecs.get(request.target)
        if codec is None:
            return {}
        prompt = None
        if request.voice_prompt:
            if "prompts" not in inspect.signature(codec.decode).parameters:
                raise AnyGPTError(f"the {request.target} codec takes no voice prompt")
            prompt = encode_voice_prompt(codec, request.voice_prompt)
        return decode_options(codec, request.seed, preset.decoder_steps, prompt)

    def _finish(self, request: Request, response: dict, generated: list[int], options: dict,
                decoded: list[tuple] = ()) -> None:
        response["generated_tokens"] = len(generated)
        if request.target == "text":
            response["text"], response["truncated"] = self.parse_text(generated)
            return
        codec = self.codecs[request.target]
        codes, truncated = self.parse_span(request.target, generated)
        media = decode_span(codec, request.target, codes, options, decoded[0] if decoded else None)
        response.update(media=media, truncated=truncated, codes=len(codes))
        if hasattr(codec, "sample_rate"):
            response["sample_rate"] = codec.sample_rate

    def parse_text(self, ids: list[int]) -> tuple[str, bool]:
        """The text reply in generated ids: everything before the first ``<eos>`` or ``</s>``, decoded and stripped.

        Returns the text and whether no stop token came (the reply was cut by the token budget).
        """
        stop = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        answer = ids if stop is None else ids[:stop]
        return self.tokenizer.decode(answer, skip_special_tokens=True).strip(), stop is None

    def parse_span(self, modality: str, ids: list[int]) -> tuple[torch.Tensor, bool]:
        """Codec-local codes of the first ``modality`` span in generated ids, checked by the codec's grammar.

        Returns the codes and whether the span was cut by the token budget (then trimmed to a whole span).

        Raises:
            AnyGPTError: No start tag, or a foreign token inside the span.
            ValueError: The codes break the codec's grammar (possible only with the grammar off).
        """
        rng, codec = self.layout.ranges[modality], self.codecs[modality]
        if rng.bos not in ids:
            raise AnyGPTError(f"no {rng.start_tag} span in the {len(ids)} generated tokens")
        span = ids[ids.index(rng.bos) + 1:]
        closed = rng.eos in span
        span = span[: span.index(rng.eos)] if closed else span
        codes = rng.from_lm(span)
        if not closed:
            keep = complete_length(codec, len(codes))
            if keep == 0:
                raise AnyGPTError(f"the {rng.start_tag} span was cut at the token budget after {len(codes)} codes")
            codes = codes[:keep]
        return check_span(codec, codes), not closed

    # ----------------------------------------------------------------- training

    def build_example(self, record: dict, rng: random.Random, max_length: int = 4096,
                      to_text_prob: float = 0.5, code_noise: float = 0.0,
                      text_dropout: float = 0.0) -> tuple[list[int], str]:
        """One training sequence from an AnyGPT-format record ``{"text": ..., "<modality>": "<so..>...<eo..>"}``.

        ``code_noise``: in a to-text example, the chance that each input code is replaced by a random code that its
        position allows (an augmentation: recognition that tolerates imperfect codes, such as those of synthesized
        speech). ``text_dropout``: the chance that a from-text example's text is left out (``This is input: <eoh>``),
        so that the model also learns the unconditional distribution that classifier-free guidance needs. A
        ``voice_prompt`` span (another clip of the same speaker) joins the prompt of a from-text example
        (``base_prompt_ids``' ``voice_ids``). Returns the token ids and the task name (``music_to_text``,
        ``text_to_music``, or ``text_to_speech_with_voice``); see ``anygpt.lm.examples``.
        """
        return pretrain_example(self, record, rng, max_length, to_text_prob, code_noise, text_dropout)


def _cli_hparams() -> dict | None:
    """The config that LightningCLI hands to ``save_hyperparameters`` while it builds the model, else None."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without it: fall back to the arguments themselves
        return None
    return _given_hyperparameters.get()


def _holds_instances(value: Any) -> bool:
    values = value.values() if isinstance(value, dict) else [value]
    return any(v is not None and not isinstance(v, (dict, str, int, float)) and not hasattr(v, "as_dict")
               for v in values)


def _fail(response: dict, request: Request, err: Exception) -> None:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not isinstance(err, AnyGPTError):
        message = f"{type(err).__name__}: {message}"
    response.update(status="error", error=f"request {request.index}: {message}")
    for key in ("media", "text"):
        response.pop(key, None)

