"""specjax: exact speculative decoding for Hugging Face language models, in pure JAX."""

__version__ = "0.1.0"
