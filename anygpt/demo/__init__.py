"""The demo world: a small AnyGPT that this project trains from nothing on data it synthesizes itself.

``grammar`` (the language), ``espeak`` and ``speech_corpus`` (its speech, deterministic for a seed), ``heldout``
(the held-out split that ships as ``heldout.jsonl``), ``text_tokenizer`` (the LM's BPE), ``ship`` (runs -> the
weights under ``weights/``) and ``session`` (the trained model as a Python object). Training stages:
``configs/demo/stage.sh``; the model: ``configs/demo.yaml``.
"""
