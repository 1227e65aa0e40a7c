"""anygpt-audio: general audio (sound effects) for anygpt, a codec plug-in registered as ``audio``.

Installed, it registers ``EncodecAudioCodec`` under the entry-point group ``anygpt.codecs``, so a config names it
``class_path: audio`` (``anygpt codecs`` lists it). See docs/adding-a-modality.md in the anygpt repository.
"""

from anygpt_audio.codec import REAL_CONFIG, TINY_CONFIG, EncodecAudioCodec

__all__ = ["EncodecAudioCodec", "REAL_CONFIG", "TINY_CONFIG"]
__version__ = "0.1.0"
