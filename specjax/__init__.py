"""specjax: exact speculative decoding for Hugging Face language models, in pure JAX.

    import specjax
    from specjax.models import load
    target = load("smollm2-135m-instruct")
    out = specjax.generate(target, ["Hello"], draft="ngram:3", gamma=4, max_new_tokens=64)
    sampler = specjax.Sampler(target, "ngram:3", gamma=4)   # keeps compiled programs for many calls
"""

from specjax.api import generate
from specjax.config import GREEDY, SamplingConfig
from specjax.sampler import GenerateResult, Sampler

__version__ = "0.1.0"
__all__ = ["GREEDY", "GenerateResult", "Sampler", "SamplingConfig", "generate"]
