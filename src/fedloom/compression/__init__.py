"""Compressed communication: codecs for update payloads, error feedback, adaptive
settings per client and compressed model downloads (see ``docs/compression.md``)."""
