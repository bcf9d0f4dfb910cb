"""Drafts with another tokenizer (token-level intersection): the vocabulary map, greedy equality and
the draft's own token sequence, on tiny models with string tables built here. The distribution
test for this drafter is in test_distribution.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_lm

from specjax import loop
from specjax.drafters import crossvocab
from specjax.errors import ConfigError, IncompatibleDraftError
from specjax.lm import LM

# The target's tokens and the draft's, as the bytes they stand for (ids are list positions).
TARGET = [b"a", b"b", b"c", b"d", b"e", b"f", b"gh", b"ij"]
DRAFT = [b"c", b"a", b"g", b"h", b"b", b"d", b"e", b"zz"]


def greedy_spelling(vocab):
    """encode_in_draft for the tables here: longest match first, bytes no token spells dropped."""
    def encode_many(items):
        out = []
        for item in items:
            ids, i = [], 0
            while i < len(item):
                best = max((j for j, t in enumerate(vocab) if t and item.startswith(t, i)), key=lambda j: len(vocab[j]),
                           default=None)
                if best is None:
                    i += 1
                    continue
                ids.append(best)
                i += len(vocab[best])
            out.append(ids)
        return out
    return encode_many


def tiny_map(target=TARGET, draft=DRAFT, **kw) -> crossvocab.VocabMap:
    kw.setdefault("target_rows", len(target))
    kw.setdefault("draft_rows", len(draft))
    return crossvocab.build_vocab_map(target, draft, greedy_spelling(draft), **kw)


def cross_pair(target_model, draft_model, vmap=None, cls=crossvocab.CrossVocabDrafter):
    """A (drafter, params) pair for the tiny models, matched through `vmap`."""
    vmap = vmap or tiny_map()
    lm, params = LM.split(draft_model.module)
    drafter = cls(lm, max_len=vmap.max_len, target_vocab=target_model.module.config.vocab_size, vocab=vmap)
    return drafter, {"model": params, **vmap.tables()}


def with_draft_prompt(batch: loop.Batch, vmap: crossvocab.VocabMap, prompts) -> loop.Batch:
    """The batch with each prompt's draft encoding (what the Sampler adds for text prompts)."""
    enc = [vmap.encode(p) for p in prompts]
    P = max(16, max(len(e) for e in enc))
    draft = np.zeros((len(enc), P), np.int32)
    for i, e in enumerate(enc):
        draft[i, :len(e)] = e
    return batch.replace(draft_prompt=jnp.asarray(draft), draft_lengths=jnp.asarray([len(e) for e in enc], jnp.int32))


def test_the_vocabulary_map_matches_tokens_by_their_bytes():
    m = tiny_map()
    assert m.d2t.tolist() == [2, 0, -1, -1, 1, 3, 4, -1]
    assert m.t2d.tolist() == [1, 4, 0, 5, 6, -1, -1, -1]
    assert m.shared == 5 and m.draft_text == 8 and m.target_text == 8
    # every target token's draft encoding: the matched id, else the draft's spelling ("gh" = g + h)
    assert [m.encode([t]) for t in range(8)] == [[1], [4], [0], [5], [6], [], [2, 3], []]
    assert m.max_len == 2 and m.encode([6, 0, 6]) == [2, 3, 1, 2, 3]
    for d, t in enumerate(m.d2t):  # the two maps are inverse on the intersection
        assert t < 0 or m.t2d[t] == d


def test_the_map_prefers_ordinary_tokens_to_byte_fallback_and_matches_identical_specials():
    target = [None, b" ", b"x", b" ", b"y"]  # id 1 is <0x20> (byte fallback), id 3 the ordinary space
    draft = [b"y", b" ", None, b"x", b"x"]  # a duplicate spelling: the lowest id wins
    m = crossvocab.build_vocab_map(target, draft, greedy_spelling(draft), target_rows=6, draft_rows=7,
                                   target_special={0: "<eos>"}, draft_special={2: "<eos>"}, target_fallback={1})
    assert m.t2d.tolist() == [-1, -1, 3, 1, 0, -1]  # padding row 5 maps to nothing
    assert m.d2t.tolist() == [4, 3, -1, 2, -1, -1, -1]
    assert m.encode([0]) == [2] and m.encode([1]) == [1]  # the special by its text; <0x20> spelled by the draft
    assert m.encode([5]) == []


def test_a_small_intersection_is_refused_with_a_typed_error():
    draft = [b"p", b"q", b"r", b"s", b"a"]
    m = tiny_map(draft=draft)
    assert m.shared == 1
    with pytest.raises(IncompatibleDraftError, match="share 1 tokens, 20%"):
        crossvocab.check_shared(m)
    crossvocab.check_shared(tiny_map())  # 5 of 8: enough


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny_lm(0, vocab=8, scale=0.6), tiny_lm(5, vocab=8, scale=0.6)


PROMPTS = [[0, 1, 2, 6, 3], [6, 6, 4, 0, 1, 2, 3, 7], [5, 1]]


def run(target, pair, prompts, *, gamma, max_new, vmap, policy=None, draft_prompts=None):
    lm, params = LM.split(target.module)
    P = max(len(p) for p in prompts)
    prompt = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, :len(p)] = p
    dec = loop.Decoder(lm=lm, drafter=pair[0] if pair else None, gamma=gamma if pair else 0,
                       size=P + max_new + gamma + 2, policy=policy)
    batch = loop.Batch.make(prompt, [len(p) for p in prompts], max_new_tokens=max_new, key=jax.random.key(0))
    if pair:
        batch = with_draft_prompt(batch, vmap, prompts)
    if draft_prompts is not None:
        batch = batch.replace(draft_prompt=jnp.asarray(draft_prompts),
                              draft_lengths=jnp.full((len(prompts),), draft_prompts.shape[1], jnp.int32))
    return loop.generate(dec, params, pair[1] if pair else None, batch)


@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_output_with_a_draft_of_another_vocabulary_equals_plain_greedy(tiny_pair, gamma):
    target, draft = tiny_pair
    vmap = tiny_map()
    plain = run(target, None, PROMPTS, gamma=gamma, max_new=12, vmap=vmap)
    spec = run(target, cross_pair(target, draft, vmap), PROMPTS, gamma=gamma, max_new=12, vmap=vmap)
    assert np.array_equal(np.asarray(plain.tokens)[:, :20], np.asarray(spec.tokens)[:, :20])
    assert np.asarray(spec.stats.drafted).sum() > 0


@pytest.mark.parametrize("max_new", [1, 3, 8, 13])
def test_the_draft_sequence_is_the_draft_encoding_of_every_committed_token(tiny_pair, max_new):
    """After the last round of a call of any length (so after every round), each row's draft sequence
    is its prompt's draft encoding followed by the draft encodings of the committed target tokens, and
    the draft's cache holds all of it but the tokens still to be fed."""
    target, draft = tiny_pair
    vmap = tiny_map()
    state = run(target, cross_pair(target, draft, vmap), PROMPTS, gamma=3, max_new=max_new, vmap=vmap)
    ds = state.draft
    tokens, lengths = np.asarray(state.tokens), np.asarray(state.lengths)
    for b, prompt in enumerate(PROMPTS):
        committed = tokens[b, len(prompt):lengths[b]].tolist()
        assert len(committed) == max_new
        want = vmap.encode(prompt) + vmap.encode(committed)
        assert int(ds.length[b]) == len(want), (b, committed)
        assert np.asarray(ds.tokens)[b, :len(want)].tolist() == want, (b, committed)
        assert int(ds.cached[b]) <= len(want)
    if max_new >= 5:  # rounds ran, and proposals were kept, not only corrections
        assert np.asarray(state.stats.accepted).sum() > 0
    # the cache: catching up from it gives the logits a fresh pass over the whole sequence gives
    drafter, dparams = cross_pair(target, draft, vmap)
    live = jnp.ones((len(PROMPTS),), bool)
    cached_logits, _ = jax.jit(drafter._catch_up)(dparams["model"], ds, live)
    for b in range(len(PROMPTS)):
        n = int(ds.length[b])
        seq = jnp.asarray(ds.tokens)[b:b + 1, :n]
        fresh, _ = draft.module(seq, jnp.arange(n)[None], draft.module.init_cache(1, n))
        np.testing.assert_allclose(np.asarray(cached_logits[b]), np.asarray(fresh[0, -1]), rtol=1e-4, atol=1e-4)


def test_sampled_rows_and_the_cache_stay_in_sync_over_many_rounds(tiny_pair):
    """Sampled decoding (proposals drawn, some rejected) keeps the same invariant."""
    from specjax.config import SamplingConfig

    target, draft = tiny_pair
    vmap = tiny_map()
    lm, params = LM.split(target.module)
    prompts = PROMPTS * 4
    P = max(len(p) for p in prompts)
    prompt = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, :len(p)] = p
    dec = loop.Decoder(lm=lm, drafter=cross_pair(target, draft, vmap)[0], gamma=2, size=P + 20 + 4)
    batch = loop.Batch.make(prompt, [len(p) for p in prompts], max_new_tokens=20,
                            sampling=SamplingConfig(temperature=1.0), key=jax.random.key(3))
    state = loop.generate(dec, params, cross_pair(target, draft, vmap)[1], with_draft_prompt(batch, vmap, prompts))
    tokens, lengths, ds = np.asarray(state.tokens), np.asarray(state.lengths), state.draft
    for b, prompt in enumerate(prompts):
        want = vmap.encode(prompt) + vmap.encode(tokens[b, len(prompt):lengths[b]].tolist())
        assert np.asarray(ds.tokens)[b, :int(ds.length[b])].tolist() == want
    stats = state.stats
    assert 0 < np.asarray(stats.accepted).sum() < np.asarray(stats.drafted).sum()


def byte_level_tokenizer(merged: list[str]):
    """A byte-level BPE tokenizer: the 256 byte tokens, then `merged` words built by merges (the tiny
    models' vocabulary is 256 + len(merged))."""
    from tokenizers import Tokenizer as Backend, decoders, pre_tokenizers
    from tokenizers.models import BPE

    from specjax.models.tokenizer import Tokenizer, _bytes_to_unicode

    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    merges = []
    for word in merged:
        spelled = "".join(chars[b] for b in word.encode("utf-8"))
        for i in range(2, len(spelled) + 1):  # left to right: ((a b) c) d
            if spelled[:i] not in vocab:
                merges.append((spelled[:i - 1], spelled[i - 1]))
                vocab[spelled[:i]] = len(vocab)
    backend = Backend(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend, bos_id=None, eos_ids=(), pad_id=None, add_bos=False)


def test_the_sampler_tokenises_text_prompts_with_the_draft_s_own_tokenizer():
    """Text prompts go to the draft through its own tokenizer (not the target's encoding mapped
    over): its sequence is the draft's encoding of the prompt text, then of the committed tokens; the
    output equals plain greedy output, and the report names the shared vocabulary."""
    from conftest import Tiny

    from specjax.sampler import Sampler

    t_tok = byte_level_tokenizer([" the", " cat", " sat", "the", " on"])
    d_tok = byte_level_tokenizer([" mat", " the", "at", " ca", " sat", " on", "ch"])
    target = Tiny(tiny_lm(0, vocab=t_tok.vocab_size).module, t_tok)
    draft = Tiny(tiny_lm(1, vocab=d_tok.vocab_size + 3).module, d_tok)  # 3 padding rows: never proposed
    prompts = ["the cat sat on the mat", " on the catch"]
    plain = Sampler(target, None)(prompts, max_new_tokens=10)
    sampler = Sampler(target, draft, gamma=3)
    seen = []
    attach = sampler.with_draft_prompt
    sampler.with_draft_prompt = lambda batch, ids, dec: seen.append(ids) or attach(batch, ids, dec)
    spec = sampler(prompts, max_new_tokens=10)
    assert seen == [[d_tok.encode(p) for p in prompts]]  # text prompts: the draft's own tokenizer
    ids_call = sampler([t_tok.encode(p) for p in prompts], max_new_tokens=10)  # token ids: mapped through the table
    assert seen[1] == [sampler.drafter.vocab.encode(t_tok.encode(p)) for p in prompts]
    assert ids_call.tokens == plain.tokens
    # "the" is one target token and three draft tokens: 64 target tokens (a buffer of 96 slots), 192 draft
    # tokens, more than the draft's buffer (about twice the target's) holds: refused before compiling
    assert len(t_tok.encode("the" * 64)) == 64 and len(d_tok.encode("the" * 64)) == 192
    with pytest.raises(ConfigError, match="192 tokens in the draft's tokenizer, more than the 189"):
        sampler(["the" * 64], max_new_tokens=4)
    assert spec.tokens == plain.tokens
    v = spec.stats["draft_vocabulary"]
    shared = set(t_tok.backend.get_vocab()) & set(d_tok.backend.get_vocab())  # same spelling: same bytes
    assert v["shared_tokens"] == len(shared) and {" the", " sat", " on"} <= {d_tok.decode([d_tok.backend.token_to_id(
        t)]) for t in shared}
    assert v["draft_text_tokens"] == d_tok.vocab_size
    assert spec.stats["memory"]["draft_vocab_map_bytes"] == sampler.drafter.vocab.nbytes > 0
    # the draft's own encoding of the text differs from the target's ids mapped through the table
    ids = t_tok.encode(prompts[1])
    assert d_tok.encode(prompts[1]) != sampler.drafter.vocab.encode(ids)
    batch = sampler.batch([t_tok.encode(p) for p in prompts], max_new_tokens=10,
                          draft_ids=[d_tok.encode(p) for p in prompts])
    assert np.asarray(batch.draft_prompt)[1, :len(d_tok.encode(prompts[1]))].tolist() == d_tok.encode(prompts[1])


def test_gamma_auto_through_every_width_keeps_output_and_the_draft_sequence(tiny_pair):
    """The window policy visiting widths 4, 1, 2 in turn (a width-1 round caches no proposal): greedy
    output equals plain, and the draft's sequence is the draft encoding of the committed tokens."""
    from test_policy import cycling

    target, draft = tiny_pair
    vmap = tiny_map()
    plain = run(target, None, PROMPTS, gamma=4, max_new=14, vmap=vmap)
    state = run(target, cross_pair(target, draft, vmap), PROMPTS, gamma=4, max_new=14, vmap=vmap,
                policy=cycling(4, 1, widest_first=True))
    assert np.array_equal(np.asarray(plain.tokens)[:, :22], np.asarray(state.tokens)[:, :22])
    assert sorted(set(np.asarray(state.adapt.width).ravel().tolist()) - {0}) != []
    tokens, lengths, ds = np.asarray(state.tokens), np.asarray(state.lengths), state.draft
    for b, prompt in enumerate(PROMPTS):
        want = vmap.encode(prompt) + vmap.encode(tokens[b, len(prompt):lengths[b]].tolist())
        assert np.asarray(ds.tokens)[b, :int(ds.length[b])].tolist() == want


def test_a_row_whose_draft_buffer_fills_stops_proposing_and_stays_exact(tiny_pair):
    """A draft prompt as long as the buffer allows: after a few rounds a row has no room for a round's
    proposals, proposes nothing from then on (plain steps), and the output still equals plain greedy."""
    target, draft = tiny_pair
    vmap = tiny_map()
    drafter, dparams = cross_pair(target, draft, vmap)
    size = max(len(p) for p in PROMPTS) + 20 + 3 + 2
    long = np.tile(np.asarray([1, 4, 0, 5]), (len(PROMPTS), 64))[:, :drafter.prompt_room(size, 3)]
    plain = run(target, None, PROMPTS, gamma=3, max_new=20, vmap=vmap)
    state = run(target, (drafter, dparams), PROMPTS, gamma=3, max_new=20, vmap=vmap, draft_prompts=long)
    assert np.array_equal(np.asarray(plain.tokens)[:, :28], np.asarray(state.tokens)[:, :28])
    Sd = drafter.buffer(size)
    assert np.all(np.asarray(state.draft.length) + 3 + 1 > Sd)  # every row ran out of room
    assert np.asarray(state.stats.rounds).sum() > np.asarray(state.stats.drafted).sum() / 3  # rounds without proposals
    with pytest.raises(ValueError, match="more than its buffer"):  # one slot wider than the room: refused when traced
        run(target, (drafter, dparams), PROMPTS, gamma=3, max_new=20, vmap=vmap,
            draft_prompts=np.ones((len(PROMPTS), drafter.prompt_room(size, 3) + 3 + 2), np.int32))


def test_time_to_first_token_runs_the_program_a_call_compiled():
    """`runner.ttft_ms` for a draft of another vocabulary builds the draft prompt as a call does, so it
    times the compiled program of `measure` and compiles nothing."""
    from conftest import Tiny

    from specjax import sampler as sampler_lib
    from specjax.bench.runner import ttft_ms
    from specjax.sampler import Sampler

    t_tok = byte_level_tokenizer([" the", " cat", "the"])
    d_tok = byte_level_tokenizer([" the", "the", " ca", "at"])
    sampler = Sampler(Tiny(tiny_lm(0, vocab=t_tok.vocab_size).module, t_tok),
                      Tiny(tiny_lm(1, vocab=d_tok.vocab_size).module, d_tok), gamma=2)
    prompts = ["the cat" * 7, " the"]  # 21 draft tokens: a call pads them to 24 (size buckets), not 32
    sampler(prompts, max_new_tokens=6)
    before = sampler_lib.COMPILED.compilations
    assert ttft_ms(sampler, prompts, batch=2, max_new_tokens=6, repeats=1) > 0
    assert sampler_lib.COMPILED.compilations == before
