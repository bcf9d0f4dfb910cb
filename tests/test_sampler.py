"""The host side: buckets, padding, prompt encoding, the compile cache, the compiled program."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from conftest import perturbed, tiny_lm

from specjax import api, loop, sampler
from specjax.config import SamplingConfig
from specjax.errors import ConfigError


@pytest.fixture(scope="module")
def target():
    return tiny_lm(0)


def test_buckets_are_powers_of_two_with_a_floor():
    assert [sampler.bucket(n) for n in (1, 2, 3, 4, 5, 16, 17)] == [1, 2, 4, 4, 8, 16, 32]
    assert sampler.bucket(3, minimum=16) == 16 and sampler.bucket(0) == 1


def test_pad_batch_pads_rows_and_length_to_buckets():
    prompt_bp, lengths_b, active_b = sampler.pad_batch([[5, 6, 7], [8], [9, 9, 9, 9, 9]], pad_id=0)
    assert prompt_bp.shape == (4, 16)
    assert prompt_bp[0, :4].tolist() == [5, 6, 7, 0] and prompt_bp[2, :5].tolist() == [9] * 5
    assert lengths_b.tolist() == [3, 1, 5, 1] and active_b.tolist() == [True, True, True, False]


def test_encode_prompts_accepts_one_or_many_and_refuses_empty():
    assert sampler.encode_prompts(None, [1, 2], chat=False) == [[1, 2]]
    assert sampler.encode_prompts(None, [[1], [2, 3]], chat=False) == [[1], [2, 3]]
    with pytest.raises(ConfigError, match="prompts is empty"):
        sampler.encode_prompts(None, [], chat=False)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        sampler.encode_prompts(None, [[1], []], chat=False)
    with pytest.raises(ConfigError, match="need a model with a tokenizer"):
        sampler.encode_prompts(None, ["hello"], chat=False)


def test_sampler_checks_gamma_and_prompt_ids(target):
    with pytest.raises(ConfigError, match="gamma must be an integer >= 1, got 0"):
        sampler.Sampler(target, "ngram:2", gamma=0)
    with pytest.raises(ConfigError, match=r"prompt 0 has token ids outside \[0, 64\)"):
        sampler.Sampler(target)([[1, 64]])


def test_one_sampler_serves_many_calls_and_matches_the_pure_loop(target):
    """The compiled, placed, donated program gives what `loop.generate` (a plain jit) gives."""
    s = sampler.Sampler(target, "layerskip:1", gamma=3)
    for prompts, cfg, seed in (([[1, 2, 3]], SamplingConfig(), 0), ([[4, 5, 6, 7], [8]], SamplingConfig(temperature=0.9), 3)):
        got = s(prompts, max_new_tokens=8, sampling=cfg, seed=seed)
        prompt_bp, lengths_b, active_b = sampler.pad_batch(prompts)
        decoder = s.decoder(sampling=cfg, max_new_tokens=8, prompt_len=prompt_bp.shape[1])
        state = loop.generate(decoder, s.params, s.draft_params, prompt_bp, lengths_b, active_b, jax.random.key(seed))
        want = [np.asarray(state.tokens)[i, len(p):int(state.lengths[i])].tolist() for i, p in enumerate(prompts)]
        assert got.tokens == want


def test_the_decode_state_is_donated_to_the_loop(target):
    s = sampler.Sampler(target, "ngram:2", gamma=2)
    prompt_bp, lengths_b, active_b = sampler.pad_batch([[1, 2, 1, 2]])
    decoder = s.decoder(sampling=SamplingConfig(), max_new_tokens=4, prompt_len=prompt_bp.shape[1])
    program, _ = s.program(decoder, prompt_bp.shape)
    state = program.start(s.params, s.draft_params, prompt_bp, lengths_b, active_b, jax.random.key(0))
    out = program.run(s.params, s.draft_params, state)
    assert state.tokens.is_deleted() and state.cache.k.is_deleted()  # their buffers were reused in place
    assert int(out.lengths[0]) == 4 + 4


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "compil" in record.getMessage().lower():
            self.count += 1


def test_second_prompt_in_the_same_bucket_does_not_recompile(target):
    draft = perturbed(target, 1, 0.005)
    api.generate(target, [[3, 4, 5, 6]], draft=draft, gamma=3, max_new_tokens=8)
    before = sampler.COMPILED.compilations
    handler = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            result = api.generate(target, [[9, 8, 7, 6, 5, 4, 3]], draft=draft, gamma=3, max_new_tokens=8, seed=7)
            same_bucket = handler.count
            # a longer prompt lands in the next bucket: that must compile (and be seen compiling)
            api.generate(target, [list(range(1, 20))], draft=draft, gamma=3, max_new_tokens=8)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert same_bucket == 0, "JAX compiled something for a prompt in an already compiled bucket"
    assert result.timing["compile_s"] == 0.0
    assert sampler.COMPILED.compilations == before + 1
    assert handler.count > 0, "the compile counter must see the new bucket compile"


def test_compiled_cache_evicts_the_least_recently_used():
    cache = sampler.CompiledCache(capacity=2)
    for key in "abca":
        cache.get_or_build(key, lambda key=key: key.upper())
    assert list(cache.table) == ["c", "a"] and cache.compilations == 4
    entry, seconds = cache.get_or_build("c", lambda: "never built")
    assert entry == "C" and seconds == 0.0 and list(cache.table) == ["a", "c"]
