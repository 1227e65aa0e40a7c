"""``anygpt chat --config configs/chat.yaml``: talk to the model on the command line.

Lines are read from standard input, so a session can be scripted (``anygpt chat ... < script.txt``). The
model, its codecs and the output folder come from the same YAML as ``anygpt predict`` (its ``MediaWriter``'s
``output_dir``; its data section is not used).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import TextIO

from anygpt import AnyGPTError

HELP = """Type a message and press Enter. Commands:
  /image PATH  /speech PATH  /music PATH   attach a file to your next message (one command per file)
  /speak                                   spoken replies on/off (each reply then carries speech)
  /voice PATH                              the voice of spoken replies (a short wav of the speaker)
  /clear                                   forget the conversation and pending attachments
  /help                                    this text
  /quit                                    leave (end of input works too)"""


class ChatShell:
    """The interactive loop: attachments, spoken replies, history, and media saved to ``output_dir``.

    Args:
        model: A ``UnifiedLM`` on its device.
        output_dir: Folder of the replies' media.
        seed: Seed of the first reply.
        stdin: Where messages come from (default: standard input).
        stdout: Where replies go (default: standard output).
    """

    def __init__(self, model, output_dir: str = "outputs/chat", seed: int = 0, stdin: TextIO | None = None,
                 stdout: TextIO | None = None):
        from anygpt.lm.chat_session import ChatSession
        from anygpt.writers import MediaWriter

        self.session = ChatSession(model, seed=seed)
        self.writer = MediaWriter(output_dir=output_dir, write_text_files=False)
        self.modalities = list(model.codecs)
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        self.pending: list[tuple[str, str]] = []
        self.speak = False

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def run(self) -> None:
        """Read and answer lines until ``/quit`` or the end of input."""
        self.say(f"anygpt chat: attach {', '.join(f'/{m}' for m in self.modalities) or 'nothing'}; /help for more.")
        for line in self.stdin:
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            try:
                self.handle(line)
            except AnyGPTError as err:
                self.say(f"error: {err}")

    def handle(self, line: str) -> None:
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        name = command[1:]
        if not command.startswith("/"):
            self.reply(line)
        elif name == "help":
            self.say(HELP)
        elif name == "clear":
            self.session.clear()
            self.pending = []
            self.say("(conversation cleared)")
        elif name == "speak":
            self.speak = not self.speak
            self.say(f"(spoken replies {'on' if self.speak else 'off'})")
        elif name == "voice":
            if not Path(argument).is_file():
                raise AnyGPTError(f"voice prompt not found: {argument or '(no path)'}")
            self.session.voice_prompt = argument
            self.say(f"(voice: {argument})")
        elif name in self.modalities:
            if not Path(argument).is_file():
                raise AnyGPTError(f"{name} file not found: {argument or '(no path)'}")
            self.pending.append((name, argument))
            self.say(f"(attached {name}: {argument})")
        else:
            raise AnyGPTError(f"unknown command {command} (/help lists them)")

    def reply(self, text: str) -> None:
        """Stream the reply: its text as it comes, each speech span written to its wav while it is generated
        (rewritten with the whole-span decode at its end), then the saved files and notes."""
        media, self.pending = self.pending, []
        number = self.session.replies + 1
        events = self.session.send(text, media, speak=self.speak, stream=True)
        first = next(events)  # a message that cannot be answered fails here, before anything is printed
        print("MMGPT: ", end="", file=self.stdout, flush=True)
        saved, growing, answer = [], None, None
        for event in itertools.chain([first], events):
            kind = event["type"]
            if kind == "text":
                print(event["text"], end="", file=self.stdout, flush=True)
            elif kind == "audio" and "media" not in event:  # a speech chunk, not a finished span of modality "audio"
                if growing is None:
                    growing = self._open_wav(f"reply{number:03d}_{len(saved)}_speech", event["sample_rate"])
                growing[1].write(event["audio"][0].clamp(-1, 1).numpy())
                growing[1].flush()
            elif kind == "done":
                answer = event["reply"]
            else:  # a finished media span
                saved.append((kind, self._save(f"reply{number:03d}_{len(saved)}_{kind}", event, growing)))
                growing = None
        self.say("")
        for kind, path in saved:
            self.say(f"  [{kind}: {path}]")
        notes = [f"dropped {answer['dropped_turns']} oldest exchanges"] if answer["dropped_turns"] else []
        if answer["truncated"]:
            notes.append("cut at the reply budget")
        if notes:
            self.say(f"  ({'; '.join(notes)})")

    def _open_wav(self, stem: str, sample_rate: int):
        import soundfile

        from anygpt.writers import create_unique

        self.writer.output_dir.mkdir(parents=True, exist_ok=True)
        path, handle = create_unique(self.writer.output_dir, stem, ".wav")
        handle.close()
        return path, soundfile.SoundFile(path, "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16")

    def _save(self, stem: str, event: dict, growing) -> Path:
        if growing is None:
            self.writer.output_dir.mkdir(parents=True, exist_ok=True)
            return self.writer.write_media(stem, event["media"], event.get("sample_rate"))
        from anygpt.writers import write_wav

        path, wav = growing
        wav.close()
        write_wav(path, event["media"], event["sample_rate"])  # the whole span's decode over the streamed chunks
        return path


def run_chat(args: list[str]) -> None:
    """Build the model from a predict YAML (``--config ...`` and overrides) and start the shell."""
    from anygpt.cli_classes import predict_model_cli_class
    from anygpt.writers import MediaWriter

    cli = predict_model_cli_class()(args=args, run=False)
    model = cli.model.to(cli.trainer.strategy.root_device).eval()
    writers = [c for c in cli.trainer.callbacks if isinstance(c, MediaWriter)]
    output_dir = str(writers[0].output_dir) if writers else "outputs/chat"
    ChatShell(model, output_dir=output_dir, seed=model.seed).run()
