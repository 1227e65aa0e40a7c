"""espeak-ng through the ``espeakng-loader`` wheel (ctypes): speech and its phoneme timing, the same on every machine.

The wheel ships one build of libespeak-ng with its voice data, so a corpus synthesized from a seed is identical on the
CPU machines and the GPU machine. The library is a process-wide singleton: one ``Espeak`` per process (the corpus
builder runs one per worker process).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

from anygpt import AnyGPTError

_SYNCHRONOUS = 2            # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_PHONEME_EVENTS = 0x0001    # espeakINITIALIZE_PHONEME_EVENTS
_DONT_EXIT = 0x8000         # espeakINITIALIZE_DONT_EXIT
_EVENT_WORD, _EVENT_END, _EVENT_PHONEME = 1, 5, 7
_CHARS_UTF8 = 1             # espeakCHARS_UTF8
_RATE, _PITCH, _RANGE = 1, 3, 4   # espeak_PARAMETER


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def variants(data_path: str | None = None) -> list[str]:
    """espeak-ng's voice variants (``m3`` in ``en-us+m3``) in a data folder, sorted. None: ``$ESPEAK_DATA_PATH``
    where it is set (as espeak-ng reads it; the corpus plans need only its ``voices/!v`` names), else the wheel's."""
    data_path = data_path or os.environ.get("ESPEAK_DATA_PATH")
    if not data_path:
        import espeakng_loader

        data_path = espeakng_loader.get_data_path()
    return sorted(os.listdir(os.path.join(data_path, "voices", "!v")))


@dataclass
class Utterance:
    """One synthesized utterance.

    Attributes:
        audio: float32 samples in [-1, 1] at ``sample_rate``.
        sample_rate: espeak-ng's rate (22050 Hz).
        phonemes: ``(phoneme, start_s, end_s)`` in espeak's own mnemonics, pauses left out.
    """

    audio: np.ndarray
    sample_rate: int
    phonemes: list[tuple[str, float, float]]


class Espeak:
    """The espeak-ng library of the ``espeakng-loader`` wheel, in synchronous mode with phoneme events.

    Args:
        data_path: espeak-ng-data folder; None: the wheel's.
    """

    _loaded: Espeak | None = None

    def __init__(self, data_path: str | None = None):
        try:
            import espeakng_loader
        except ImportError as err:
            raise AnyGPTError("speech synthesis needs the espeakng-loader wheel: pip install espeakng-loader") from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.libc = ctypes.CDLL(None)
        self.data_path, self._variants = data_path or espeakng_loader.get_data_path(), None
        path = self.data_path.encode()
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, path, _PHONEME_EVENTS | _DONT_EXIT)
        if self.sample_rate <= 0:
            raise AnyGPTError(f"espeak-ng did not start with its data at {path.decode()}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._callback = _CALLBACK(self._collect)  # kept alive: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    @classmethod
    def shared(cls) -> Espeak:
        """This process's instance (the library cannot be started twice)."""
        if cls._loaded is None:
            cls._loaded = cls()
        return cls._loaded

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != 0:
            event = events[i]
            if event.type in (_EVENT_PHONEME, _EVENT_WORD, _EVENT_END):
                name = event.id.string.decode("utf-8", "replace") if event.type == _EVENT_PHONEME else ""
                self._events.append((event.type, event.audio_position, name))
            i += 1
        return 0

    def voices(self) -> list[str]:
        """Names of the voice variants (``en+<variant>``) that the data folder holds."""
        if self._variants is None:
            self._variants = variants(self.data_path)
        return self._variants

    def say(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
            seed: int = 0) -> Utterance:
        """Synthesize ``text`` with ``voice`` (e.g. ``en-us+f3``), ``rate`` in words per minute, ``pitch`` and
        ``pitch_range`` in 0-100; ``seed`` fixes espeak's random pitch flutter (same arguments, same samples)."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self.libc.srand(ctypes.c_uint(seed))  # the library also draws from libc's rand()
        language, _, variant = voice.partition("+")
        if (variant and variant not in self.voices()) or self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise AnyGPTError(f"voice: espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        if self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise AnyGPTError(f"text: espeak-ng could not synthesize {text[:40]!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return Utterance(audio, self.sample_rate, self._phonemes(len(audio) / self.sample_rate))

    def _phonemes(self, duration: float) -> list[tuple[str, float, float]]:
        """Phoneme spans from the event stream: each phoneme lasts until the next event; pauses (``_``) dropped."""
        marks = sorted((ms / 1000.0, kind, name) for kind, ms, name in self._events)
        spans = []
        for i, (start, kind, name) in enumerate(marks):
            if kind != _EVENT_PHONEME or not name.strip() or name.startswith("_"):
                continue
            end = next((t for t, _, _ in marks[i + 1:] if t > start), duration)
            spans.append((name.strip(), start, min(end, duration)))
        return spans
