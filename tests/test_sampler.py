"""The host side: buckets, padding, prompt encoding, the compile cache, the compiled program."""

from __future__ import annotations

import logging
import sys

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


def test_buffer_sizes_follow_the_ladder_of_powers_of_two_and_one_and_a_half_times_them():
    sizes = [sampler.size_bucket(n) for n in (1, 16, 17, 24, 25, 32, 33, 48, 49, 64, 65, 96, 97, 1000)]
    assert sizes == [16, 16, 24, 24, 32, 32, 48, 48, 64, 64, 96, 96, 128, 1024]
    for n in range(1, 3000):
        s = sampler.size_bucket(n)
        assert s >= n and (s < 2 * n or s == 16), n  # always fits, never more than twice what was asked


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
    with pytest.raises(ConfigError, match="gamma must be >= 1, got 0"):
        sampler.Sampler(target, "ngram:2", gamma=0)
    with pytest.raises(ConfigError, match=r"prompt 0 has token ids outside \[0, 64\)"):
        sampler.Sampler(target)([[1, 64]])


def test_one_sampler_serves_many_calls_and_matches_the_pure_loop(target):
    """The compiled, placed, donated program gives what `loop.generate` (a plain jit) gives."""
    s = sampler.Sampler(target, "layerskip:1", gamma=3)
    for prompts, cfg, seed in (([[1, 2, 3]], SamplingConfig(), 0), ([[4, 5, 6, 7], [8]], SamplingConfig(temperature=0.9), 3)):
        got = s(prompts, max_new_tokens=8, sampling=cfg, seed=seed)
        batch = s.batch(prompts, sampling=cfg, max_new_tokens=8, seed=seed)
        decoder = s.decoder(max_new_tokens=8, prompt_len=batch.prompt.shape[1])
        state = loop.generate(decoder, s.params, s.draft_params, batch)
        want = [np.asarray(state.tokens)[i, len(p):int(state.lengths[i])].tolist() for i, p in enumerate(prompts)]
        assert got.tokens == want


def test_the_decode_state_is_donated_to_the_loop(target):
    s = sampler.Sampler(target, "ngram:2", gamma=2)
    batch = s.batch([[1, 2, 1, 2]], max_new_tokens=4)
    decoder = s.decoder(max_new_tokens=4, prompt_len=batch.prompt.shape[1])
    program, _ = s.program(decoder, batch)
    state = program.start(*program.place(s.params, s.draft_params, batch))
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



def test_compiled_cache_drops_old_programs_while_the_process_holds_too_many_mappings():
    held = {"a": 300, "b": 300, "c": 300, "d": 500}  # mappings each entry's executable holds
    cache = sampler.CompiledCache(capacity=24, map_share=0.5, map_limit=lambda: 2000,
                                  count_maps=lambda: 100 + sum(held[k] for k in cache.table))
    for key in "abc":
        cache.get_or_build(key, lambda key=key: key.upper())
    assert list(cache.table) == ["a", "b", "c"] and cache.evicted_for_maps == 0  # 1,000 <= budget 1,000
    cache.get_or_build("a", lambda: "never built")  # a hit reorders only
    cache.get_or_build("d", lambda: "D")  # 1,500 > 1,000: drop b, then c (the least recently used)
    assert list(cache.table) == ["a", "d"] and cache.evicted_for_maps == 2
    held["e"] = 5000  # one program over the budget alone is still kept: the call needs it
    cache.get_or_build("e", lambda: "E")
    assert list(cache.table) == ["e"]
    free = sampler.CompiledCache(map_limit=lambda: None, count_maps=lambda: 10**9)  # no limit known
    for key in "xyz":
        free.get_or_build(key, lambda: 0)
    assert list(free.table) == ["x", "y", "z"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_mapping_counters_read_this_process():
    count, limit = sampler.process_mappings(), sampler.mapping_limit()
    assert isinstance(count, int) and count > 10
    assert isinstance(limit, int) and limit > count

# -- compile once: settings and lengths are runtime values ---------------------------------------

SWEEP_TEMPERATURES = [0.0, 0.5, 0.7, 0.9, 1.0]  # 0 = greedy
SWEEP_TOP_P = [1.0, 0.9, 0.8]
SWEEP_LENGTHS = [8, 9, 10, 11]  # one buffer bucket (S = 32) with and without a drafter


@pytest.mark.parametrize("drafter", [None, "ngram:2", "layerskip:1", "model"])
def test_a_sweep_of_settings_and_lengths_compiles_once(target, drafter):
    draft = perturbed(target, 1, 0.005) if drafter == "model" else drafter
    s = sampler.Sampler(target, draft, gamma=3)
    prompts = [[1, 2, 3, 1, 2, 3], [4, 5]]
    sampler.COMPILED.clear()  # so the first call compiles here, whatever earlier tests left
    before = sampler.COMPILED.compilations
    first = s(prompts, max_new_tokens=SWEEP_LENGTHS[0], seed=0)
    assert first.timing["compilations"] == 1 and sampler.COMPILED.compilations == before + 1
    handler, logger = _CompileCounter(), logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    outputs = {}
    try:
        with jax.log_compiles(True):
            for t in SWEEP_TEMPERATURES:
                for p in SWEEP_TOP_P:
                    for n in SWEEP_LENGTHS:
                        r = s(prompts, sampling=SamplingConfig.make(t, None, p), max_new_tokens=n, seed=1)
                        assert r.timing["compilations"] == 0 and r.timing["compile_s"] == 0.0, (t, p, n)
                        assert [len(x) for x in r.tokens] == [n, n]  # no EOS here: every row runs to its limit
                        outputs[t, p, n] = r.tokens
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert sampler.COMPILED.compilations == before + 1
    assert handler.count == 0, "JAX compiled something during the sweep"
    # the settings did reach the program: greedy outputs are prefixes of each other, sampled ones vary
    assert outputs[0.0, 1.0, 8] == [o[:8] for o in outputs[0.0, 0.8, 11]]
    assert len({str(v) for k, v in outputs.items() if k[0] == 1.0}) > 1


def test_any_top_k_shares_the_program():
    s = sampler.Sampler(tiny_lm(0, vocab=256), "ngram:2", gamma=2)
    sampler.COMPILED.clear()
    before = sampler.COMPILED.compilations
    for k in (None, 1, 5, 64, 65, 200, 256, 10_000):
        s([[1, 2, 3]], sampling=SamplingConfig(temperature=0.8, top_k=k), max_new_tokens=6)
    assert sampler.COMPILED.compilations == before + 1


MIXED = [SamplingConfig(), SamplingConfig(temperature=0.7), SamplingConfig(temperature=1.0, top_k=5),
         SamplingConfig(temperature=0.9, top_p=0.8)]
MIXED_PROMPTS = [[1, 2, 3, 1, 2, 3, 1], [9, 8, 7], [20, 21, 22, 23, 20, 21], [40, 41]]


@pytest.mark.parametrize("drafter", [pytest.param(None, marks=pytest.mark.slow), "ngram:2", "model"])  # None: test-all
def test_each_row_of_a_mixed_batch_equals_that_row_run_alone(target, drafter):
    """Row b's randomness is keyed by its own seed only (`sampler.row_keys`): a batch with a different
    setting, length and seed per row gives every row what it gives alone."""
    draft = perturbed(target, 1, 0.005) if drafter == "model" else drafter
    s = sampler.Sampler(target, draft, gamma=3)
    seeds, lengths = [11, 12, 13, 14], [12, 9, 12, 7]
    batch = s(MIXED_PROMPTS, sampling=MIXED, max_new_tokens=lengths, seed=seeds)
    for b in range(4):
        alone = s([MIXED_PROMPTS[b]], sampling=MIXED[b], max_new_tokens=lengths[b], seed=[seeds[b]])
        assert batch.tokens[b] == alone.tokens[0], f"row {b} ({MIXED[b]})"
    assert [len(t) for t in batch.tokens] == lengths
    # and the settings matter: the same rows with other seeds differ somewhere among the sampled rows
    other = s(MIXED_PROMPTS, sampling=MIXED, max_new_tokens=lengths, seed=[21, 22, 23, 24])
    assert other.tokens[0] == batch.tokens[0] and other.tokens[1:] != batch.tokens[1:]


def test_eos_ids_and_lengths_per_row(target):
    s = sampler.Sampler(target, "ngram:2", gamma=2, eos_ids=())
    free = s(MIXED_PROMPTS[:2], max_new_tokens=10)
    stop = free.tokens[0][3]  # a token the first row emits at index 3 (its first occurrence ends the row)
    cut = free.tokens[0].index(stop) + 1
    out = s(MIXED_PROMPTS[:2], max_new_tokens=[10, 4], eos_ids=[(stop,), ()])
    assert out.tokens[0] == free.tokens[0][:cut] and out.tokens[1] == free.tokens[1][:4]
    with pytest.raises(ConfigError, match="max_new_tokens has 3 entries for 2 prompts"):
        s(MIXED_PROMPTS[:2], max_new_tokens=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"max_new_tokens\[1\] must be >= 1, got 0"):
        s(MIXED_PROMPTS[:2], max_new_tokens=[4, 0])
    with pytest.raises(ConfigError, match="sampling has 1 entries for 2 prompts"):
        s(MIXED_PROMPTS[:2], sampling=[SamplingConfig()])
