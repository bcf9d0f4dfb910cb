"""`specjax.generate`: text or token prompts in, tokens, text and statistics out.

This is the host-side wrapper around the jitted loops in `loop.py`: it tokenizes, pads prompts to
length buckets and the batch to a batch bucket (so a new prompt in a seen bucket reuses the compiled
program), compiles ahead of time (so compile time is reported apart from run time), runs, and
unpads. The model objects it takes are duck-typed (`.module`, `.tokenizer`); see `specjax.lm`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import loop
from specjax.config import DecodeConfig, SamplingConfig
from specjax.errors import ConfigError
from specjax.lm import LM

MIN_PROMPT_BUCKET = 16


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass
class GenerateResult:
    tokens: list[list[int]]  # generated ids per prompt, prompt excluded
    text: list[str] | None
    prompt_tokens: list[list[int]]
    stats: dict[str, Any]
    timing: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=None)


class _Compiled:
    """Ahead-of-time compiled executables, one per (static settings, bucket); counts compilations."""

    def __init__(self):
        self.table: dict[Any, Any] = {}
        self.compilations = 0

    def get(self, key, fn, *args, **static):
        if key not in self.table:
            start = time.perf_counter()
            self.table[key] = fn.lower(*args, **static).compile()
            self.compilations += 1
            return self.table[key], time.perf_counter() - start
        return self.table[key], 0.0


COMPILED = _Compiled()


def encode_prompts(tokenizer, prompts: Sequence, *, chat: bool) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError("text prompts need a model with a tokenizer; pass token ids instead")
            if chat:
                text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                out.append(tokenizer.encode(text, add_bos=False))
            else:
                out.append(tokenizer.encode(p))
        else:
            ids = [int(t) for t in p]
            out.append(ids)
        if not out[-1]:
            raise ConfigError(f"prompt {len(out) - 1} is empty after tokenization")
    return out


def pad_batch(prompts: list[list[int]], pad_id: int = 0):
    """-> (prompt_bp, lengths_b, active_b) as numpy, padded to the length and batch buckets."""
    B = bucket(len(prompts))
    P = bucket(max(len(p) for p in prompts), MIN_PROMPT_BUCKET)
    prompt_bp = np.full((B, P), pad_id, np.int32)
    lengths_b = np.ones((B,), np.int32)
    active_b = np.zeros((B,), bool)
    for i, p in enumerate(prompts):
        prompt_bp[i, : len(p)] = p
        lengths_b[i] = len(p)
        active_b[i] = True
    return prompt_bp, lengths_b, active_b


def generate(target, prompts, *, sampling: SamplingConfig | None = None, max_new_tokens: int = 64,
             seed: int = 0, chat: bool = False, eos_ids: Sequence[int] | None = None) -> GenerateResult:
    """Generate continuations of `prompts` (strings, or lists of token ids) with `target`.

    target: a loaded model (`specjax.models.load(...)`): anything with `.module` (the NNX model)
    and `.tokenizer`. sampling: temperature / top-k / top-p (greedy by default).
    """
    sampling = sampling or SamplingConfig()
    tokenizer = getattr(target, "tokenizer", None)
    ids = encode_prompts(tokenizer, prompts, chat=chat)
    if eos_ids is None:
        eos_ids = tuple(tokenizer.eos_ids) if tokenizer is not None else ()
    lm, params = LM.split(target.module)
    vocab = tokenizer.vocab_size if tokenizer is not None else None
    decode = DecodeConfig(max_new_tokens=max_new_tokens, eos_ids=tuple(int(e) for e in eos_ids),
                          vocab_size=vocab if vocab and vocab < lm.config.vocab_size else None)
    prompt_bp, lengths_b, active_b = pad_batch(ids)
    size = prompt_bp.shape[1] + max_new_tokens + 1
    key = jax.random.key(seed)
    args = (lm, params, jnp.asarray(prompt_bp), jnp.asarray(lengths_b), jnp.asarray(active_b), key)
    static = dict(sampling_cfg=sampling, decode=decode, size=size)
    compiled, compile_s = COMPILED.get(("ar", lm, sampling, decode, size, prompt_bp.shape), loop.generate_ar,
                                       *args, **static)
    start = time.perf_counter()
    state = compiled(*args[1:])
    jax.block_until_ready(state.tokens)
    run_s = time.perf_counter() - start

    tokens_bs, lengths, plen = (np.asarray(x) for x in (state.tokens, state.lengths, state.prompt_lengths))
    out = [tokens_bs[i, plen[i]:lengths[i]].tolist() for i in range(len(ids))]
    n_new = sum(len(o) for o in out)
    text = [tokenizer.decode(o) for o in out] if tokenizer is not None else None
    stats = {"new_tokens": [len(o) for o in out], "target_steps": int(state.steps) + 1}
    timing = {"compile_s": compile_s, "run_s": run_s, "tokens_per_s": n_new / run_s if run_s > 0 else 0.0}
    return GenerateResult(tokens=out, text=text, prompt_tokens=ids, stats=stats, timing=timing)
