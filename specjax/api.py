"""`specjax.generate`: text or token prompts in, tokens, text and statistics out.

This is the host-side wrapper around the jitted loops in `loop.py`: it tokenizes, pads prompts to
length buckets and the batch to a batch bucket (so a new prompt in a seen bucket reuses the compiled
program), compiles ahead of time (so compile time is reported apart from run time), runs, and
unpads. Model objects are duck-typed (`.module`, `.tokenizer`, e.g. `specjax.models.load(...)`);
the engine never imports the model zoo.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import loop, metrics
from specjax.config import DecodeConfig, SamplingConfig
from specjax.drafters.model import ModelDrafter
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
        return json.dumps(dataclasses.asdict(self))


class CompiledCache:
    """Ahead-of-time compiled executables, one per (static settings, bucket); counts compilations.

    Least recently used entries beyond `capacity` are dropped: every CPU executable holds memory
    mappings of its own, and a long-lived process must not accumulate them without bound."""

    def __init__(self, capacity: int = 24):
        self.table: dict[Any, Any] = {}
        self.capacity = capacity
        self.compilations = 0

    def get(self, key, fn, *args, **static):
        """`fn` (a jitted function) lowered and compiled for these arguments -> (executable, compile seconds)."""
        return self.get_or_build(key, lambda: fn.lower(*args, **static).compile())

    def get_or_build(self, key, build):
        """The entry for `key`, built by `build()` (and timed) on a miss -> (entry, compile seconds)."""
        if key in self.table:
            self.table[key] = self.table.pop(key)  # most recently used goes last
            return self.table[key], 0.0
        started = time.perf_counter()
        entry = build()
        self.table[key] = entry
        self.compilations += 1
        while len(self.table) > self.capacity:
            self.table.pop(next(iter(self.table)))
        return entry, time.perf_counter() - started

    def clear(self) -> None:
        self.table.clear()


COMPILED = CompiledCache()


def encode_prompts(tokenizer, prompts: Sequence, *, chat: bool) -> list[list[int]]:
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise ConfigError("prompts is empty")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError("text prompts need a model with a tokenizer; pass token ids instead")
            if chat:
                text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                out.append(tokenizer.encode(text, add_bos=False))
            else:
                out.append(tokenizer.encode(p))
        else:
            out.append([int(t) for t in p])
        if not out[-1]:
            raise ConfigError(f"prompt {i} is empty after tokenization")
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


class IncompatibleDraftError(ConfigError):
    """A draft model whose vocabulary does not match the target's."""


def check_vocabularies(target, draft) -> int | None:
    """Refuse a draft model whose tokens differ from the target's; -> the shared vocabulary size
    when the two embeddings are padded differently (ids past it must be masked), else None."""
    t_tok, d_tok = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    t_rows, d_rows = target.module.config.vocab_size, draft.module.config.vocab_size
    if t_tok is not None and d_tok is not None:
        if t_tok.vocab_size != d_tok.vocab_size:
            raise IncompatibleDraftError(
                f"draft tokenizer has {d_tok.vocab_size} tokens, the target's has {t_tok.vocab_size}: "
                "speculative decoding needs the same vocabulary")
        t_vocab, d_vocab = t_tok.backend.get_vocab(), d_tok.backend.get_vocab()
        if t_vocab != d_vocab:
            diffs = sorted(i for i in range(t_tok.vocab_size) if t_tok.token(i) != d_tok.token(i))
            shown = ", ".join(f"id {i}: target {t_tok.token(i)!r} vs draft {d_tok.token(i)!r}" for i in diffs[:3])
            raise IncompatibleDraftError(f"draft and target tokenizers differ at {len(diffs)} ids ({shown})")
        shared = t_tok.vocab_size
        if shared > min(t_rows, d_rows):
            raise IncompatibleDraftError(
                f"embedding has fewer rows than the tokenizer has tokens (target {t_rows}, draft {d_rows}, "
                f"tokenizer {shared})")
        return shared if t_rows != d_rows else None
    if t_rows != d_rows:
        raise IncompatibleDraftError(
            f"draft vocabulary size {d_rows} differs from the target's {t_rows}, and without tokenizers "
            "specjax cannot tell whether one is a padded version of the other")
    return None


def resolve_drafter(draft, target, *, eos_ids=()) -> tuple[Any, Any, int | None]:
    """`draft` -> (drafter, draft_params, vocabulary limit or None).

    Accepted: a loaded model with the target's tokenizer (a draft model); "layerskip:K",
    "layerskip:0-9,20-29" (optionally ":own" for a private cache); "ngram:NMAX[:NMIN]"; or an
    already built (drafter, params) pair."""
    from specjax.drafters import NGramDrafter, layer_skip, parse_layers

    if isinstance(draft, tuple) and len(draft) == 2:
        return draft[0], draft[1], None
    if hasattr(draft, "module"):
        limit = check_vocabularies(target, draft)
        lm, params = LM.split(draft.module)
        return ModelDrafter(lm, target_vocab=target.module.config.vocab_size), params, limit
    if isinstance(draft, str):
        kind, _, rest = draft.partition(":")
        if kind == "layerskip" and rest:
            spec, _, cache = rest.partition(":")
            lm = LM.split(target.module)[0]
            return layer_skip(lm, parse_layers(spec, lm.config.num_layers), cache or "shared"), None, None
        if kind == "ngram" and rest:
            sizes = rest.split(":")
            try:
                nmax, nmin = int(sizes[0]), int(sizes[1]) if len(sizes) > 1 else 1
            except ValueError as err:
                raise ConfigError(f"drafter {draft!r}: expected ngram:NMAX[:NMIN] with integers") from err
            return NGramDrafter(nmax=nmax, nmin=nmin, eos_ids=tuple(eos_ids)), None, None
        if kind == "model":
            raise ConfigError("'model:NAME' is resolved by the CLI; from Python pass the loaded draft model")
        raise ConfigError(f"unknown drafter {draft!r}; use model:NAME, layerskip:K, or ngram:NMAX[:NMIN]")
    raise ConfigError(f"draft must be a loaded model, a drafter string or a (drafter, params) pair, "
                      f"got {type(draft).__name__}")


def memory_report(target, draft=None, *, batch: int = 1, length: int = 2048, drafter_params=None) -> dict:
    """Parameter and KV-cache bytes of target and drafter for `batch` rows of `length` slots.

    The speculation overhead is the drafter's parameters plus its cache (zero for prompt lookup and
    for layer skip with the shared cache)."""
    lm, params = LM.split(target.module)
    if draft is not None and not (isinstance(draft, tuple) and len(draft) == 2):
        drafter, dparams, _ = resolve_drafter(draft, target)
    elif draft is not None:
        drafter, dparams = draft
    else:
        drafter, dparams = None, None
    target_cache = jax.eval_shape(lambda p: lm.init_cache(p, batch, length), params)
    report = {
        "batch": batch, "length": length,
        "target_param_bytes": _nbytes(params), "target_cache_bytes": _nbytes(target_cache),
        "draft_param_bytes": 0, "draft_cache_bytes": 0,
    }
    if drafter is not None:
        report["draft_param_bytes"] = _nbytes(dparams)
        draft_cache = jax.eval_shape(lambda d, p: drafter.init(d, p, batch, length), dparams, params)
        report["draft_cache_bytes"] = _nbytes(draft_cache)
    report["speculation_overhead_bytes"] = report["draft_param_bytes"] + report["draft_cache_bytes"]
    return report


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def generate(target, prompts, *, draft=None, sampling: SamplingConfig | None = None, gamma: int = 4,
             max_new_tokens: int = 64, seed: int = 0, chat: bool = False,
             eos_ids: Sequence[int] | None = None, mesh=None, rules=None, draft_rules=None) -> GenerateResult:
    """Generate continuations of `prompts` (strings, or lists of token ids) with `target`.

    draft: None for plain autoregressive decoding; a loaded draft model with the target's tokenizer;
    "layerskip:K" (the target's first K blocks; or "layerskip:0-9,20-29", ":own" for a private
    cache); "ngram:NMAX[:NMIN]" (prompt lookup); or a (drafter, params) pair (see `resolve_drafter`).
    sampling: temperature / top-k / top-p (greedy by default). gamma: proposals per round (G).
    mesh: a `specjax.sharding.make_mesh(data, model)` mesh to shard params, caches and state over
    (rules / draft_rules: logical-axis tables, see `specjax.sharding`).
    Returns tokens and text per prompt, statistics (acceptance, tokens per round, memory) and
    timings (compile time apart from run time).
    """
    sampling = sampling or SamplingConfig()
    if not isinstance(gamma, int) or gamma < 1:
        raise ConfigError(f"gamma must be an integer >= 1, got {gamma!r}")
    tokenizer = getattr(target, "tokenizer", None)
    ids = encode_prompts(tokenizer, prompts, chat=chat)
    if eos_ids is None:
        eos_ids = tuple(tokenizer.eos_ids) if tokenizer is not None else ()
    eos_ids = tuple(int(e) for e in eos_ids)
    if mesh is not None:
        from specjax.sharding import prepare_for_mesh

        target = _Model(prepare_for_mesh(target.module, mesh), tokenizer)
    lm, params = LM.split(target.module)
    V = lm.config.vocab_size
    for i, p in enumerate(ids):
        if min(p) < 0 or max(p) >= V:
            raise ConfigError(f"prompt {i} has token ids outside [0, {V})")
    limit = tokenizer.vocab_size if tokenizer is not None else V
    rows = V  # the widest embedding in play: ids from `limit` up to it must never be drawn
    drafter = draft_params = None
    if draft is not None:
        drafter, draft_params, shared = resolve_drafter(draft, target, eos_ids=eos_ids)
        if shared is not None:
            limit, rows = min(limit, shared), max(rows, draft.module.config.vocab_size)
    decode = DecodeConfig(max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                          vocab_size=limit if limit < rows else None)
    prompt_bp, lengths_b, active_b = pad_batch(ids)
    P = prompt_bp.shape[1]
    g = 0 if drafter is None else gamma
    size = P + max_new_tokens + (1 if drafter is None else gamma + 2)
    static = dict(gamma=g, sampling_cfg=sampling, decode=decode)
    host_inputs = (prompt_bp, lengths_b, active_b)
    if mesh is None:
        run, compile_s = _compiled_local(lm, params, drafter, draft_params, host_inputs, seed, size, static)
    else:
        run, compile_s = _compiled_sharded(lm, params, drafter, draft_params, host_inputs, seed, size, static,
                                           mesh, rules, draft_rules)
    started = time.perf_counter()
    state = run()
    jax.block_until_ready(state.tokens)
    run_s = time.perf_counter() - started
    result = _result(state, ids, tokenizer, compile_s, run_s, speculative=draft is not None)
    result.stats["memory"] = memory_report(target, None if draft is None else (drafter, draft_params),
                                           batch=prompt_bp.shape[0], length=size)
    return result


@dataclasses.dataclass
class _Model:
    module: Any
    tokenizer: Any


def _compiled_local(lm, params, drafter, draft_params, host_inputs, seed, size, static):
    """`loop.generate_spec` compiled for this bucket (drafter None: the autoregressive loop)."""
    inputs = (*(jnp.asarray(x) for x in host_inputs), jax.random.key(seed))
    static = dict(static, size=size)
    compiled, compile_s = COMPILED.get(("local", lm, drafter, *static.values(), host_inputs[0].shape),
                                       loop.generate_spec, lm, params, drafter, draft_params, *inputs, **static)
    return (lambda: compiled(params, draft_params, *inputs)), compile_s


def _compiled_sharded(lm, params, drafter, draft_params, host_inputs, seed, size, static, mesh, rules, draft_rules):
    """`decode_start` and `decode_run` jitted with explicit in/out shardings; the state is donated."""
    from specjax import sharding as shd

    rules = rules or shd.DEFAULT_RULES
    draft_rules = draft_rules or shd.REPLICATED_RULES
    plan = shd.Plan()
    p_sh = shd.param_shardings(params, mesh, rules, plan)
    d_sh = shd.param_shardings(draft_params, mesh, draft_rules, plan) if draft_params is not None else None
    key = jax.random.key(seed)
    in_sh = shd.tree_shardings((*host_inputs, key), mesh, rules, plan)
    gamma, sampling_cfg, decode = static["gamma"], static["sampling_cfg"], static["decode"]

    def start_fn(params, draft_params, prompt_bp, lengths_b, active_b, key):
        return loop.decode_start(lm, params, drafter, draft_params, prompt_bp, lengths_b, active_b, key,
                                 gamma=gamma, sampling_cfg=sampling_cfg, decode=decode, size=size)

    def run_fn(params, draft_params, state):
        return loop.decode_run(lm, params, drafter, draft_params, state, gamma=gamma, sampling_cfg=sampling_cfg,
                               decode=decode)

    placed = shd.place((params, draft_params, *host_inputs, key), (p_sh, d_sh, *in_sh))
    cache_key = ("sharded", lm, drafter, gamma, sampling_cfg, decode, size, host_inputs[0].shape, mesh,
                 tuple(rules), tuple(draft_rules))

    def build():
        state_shape = jax.eval_shape(start_fn, *placed)
        state_sh = shd.tree_shardings(state_shape, mesh, rules, plan)
        state_arg = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                 state_shape, state_sh)
        start_c = jax.jit(start_fn, in_shardings=(p_sh, d_sh, *in_sh), out_shardings=state_sh).lower(
            *placed).compile()
        run_c = jax.jit(run_fn, in_shardings=(p_sh, d_sh, state_sh), out_shardings=state_sh,
                        donate_argnums=(2,)).lower(placed[0], placed[1], state_arg).compile()
        return start_c, run_c, plan

    (start_c, run_c, _), compile_s = COMPILED.get_or_build(cache_key, build)
    return (lambda: run_c(placed[0], placed[1], start_c(*placed))), compile_s


def _host(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as a full numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _result(state, ids, tokenizer, compile_s, run_s, *, speculative: bool) -> GenerateResult:
    n = len(ids)
    state = state.replace(cache=None, draft=None, key=None)  # only tokens, lengths and counters come back
    state = jax.tree.map(_host, state)
    tokens_bs, lengths, plen = state.tokens, state.lengths, state.prompt_lengths
    out = [tokens_bs[i, plen[i]:lengths[i]].tolist() for i in range(n)]
    new_tokens = [len(o) for o in out]
    text = [tokenizer.decode(o) for o in out] if tokenizer is not None else None
    stats: dict[str, Any] = {"new_tokens": new_tokens, "target_forward_passes": int(state.steps) + 1}
    if speculative:
        s = state.stats
        emitted = np.maximum(np.asarray(lengths - plen - 1), 0)
        stats.update(metrics.summarize(s.rounds, s.drafted, s.accepted, s.accepted_at, s.reached_at, emitted, rows=n))
    total = sum(new_tokens)
    timing = {"compile_s": compile_s, "run_s": run_s, "tokens_per_s": total / run_s if run_s > 0 else 0.0}
    return GenerateResult(tokens=out, text=text, prompt_tokens=ids, stats=stats, timing=timing)
