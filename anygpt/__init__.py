"""anygpt: one language model over text, speech, image and music tokens (AnyGPT, arXiv 2402.12226).

Heavy libraries (transformers, diffusers, torchaudio) are imported only where they are used, so that
``import anygpt`` and ``anygpt --help`` stay fast.
"""

__version__ = "0.1.0"


class AnyGPTError(Exception):
    """A user-facing error whose message is one clear line (the CLI prints it without a traceback)."""
