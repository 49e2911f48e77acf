"""Frozen text encoders (CLIP, T5) whose outputs `lplkit encode --text-encoder` caches in a store.

`transformers` is imported only when an encoder is loaded (`lplkit.text.encoders.load_text_encoder`).
"""
