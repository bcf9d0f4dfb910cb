"""specjax: exact speculative decoding for Hugging Face language models, in pure JAX.

    import specjax
    from specjax.models import load
    target = load("smollm2-135m-instruct")
    out = specjax.generate(target, ["Hello"], draft=..., gamma=4, max_new_tokens=64)
"""

from specjax.api import GenerateResult, generate
from specjax.config import DecodeConfig, SamplingConfig

__version__ = "0.1.0"
__all__ = ["DecodeConfig", "GenerateResult", "SamplingConfig", "generate"]
