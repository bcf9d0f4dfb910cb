"""The host side of decoding: tokenisation, buckets, the compile cache, placement on a mesh, results.

`Sampler` is the long-lived host object (one per target and drafter); it builds the frozen,
hashable `loop.Decoder` for each call's settings and runs one compiled program for it. Every program
is compiled the same way, with or without a mesh (no mesh means a one-device mesh): `Decoder.start`
(prefill) and `Decoder.run` (the while loop) are jitted with explicit input and output shardings,
and `run` takes the decode state as a donated argument, so its buffers are updated in place.

Sampling settings, `max_new_tokens`, EOS ids and seeds are runtime values (per row, see
`loop.Batch`), so they never cause a compilation. What is static is bounded and bucketed: prompts
are padded to power-of-two length buckets (at least `MIN_PROMPT_BUCKET`), the batch to a
power-of-two size, the buffer length S to the ladder of `size_bucket` (16, 24, 32, 48, 64, 96, ...:
powers of two and 1.5 times them), and EOS ids to `EOS_SLOTS` per row (more raise it to a power
of two). A call whose buckets were seen before reuses the compiled program; compile time is
measured apart from run time. Compiled programs also persist on disk (`enable_compile_cache`), so
a second process loads instead of compiling.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import policy as policy_lib, report, sampling, sharding as shd, validate
from specjax.config import SamplingConfig, cache_dir
from specjax.drafters import registry
from specjax.errors import ConfigError
from specjax.lm import LM
from specjax.loop import VERIFY_MODES, Batch, Decoder

MIN_PROMPT_BUCKET = 16
MIN_SIZE_BUCKET = 16
EOS_SLOTS = 4  # EOS ids per row a program takes without recompiling (more raise it to a power of two)


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


def size_bucket(n: int) -> int:
    """The buffer length S for n slots: the smallest of 16, 24, 32, 48, 64, 96, ... (2^k and 1.5 * 2^k)
    that holds n, so any max_new_tokens up to the bucket's edge reuses one program and at most a
    third of the buffer is slack."""
    n = max(int(n), MIN_SIZE_BUCKET)
    p = bucket(n)
    return p * 3 // 4 if p * 3 // 4 >= n and p >= 32 else p


def enable_compile_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache under `path` (default: $SPECJAX_CACHE/jax-compile,
    else ~/.cache/specjax/jax-compile), so a later process loads the programs this one compiled.

    Off when SPECJAX_COMPILE_CACHE=0. A cache directory already configured (by the user, or
    `JAX_COMPILATION_CACHE_DIR`) is left as it is. -> the directory in use, or None."""
    if os.environ.get("SPECJAX_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = os.fspath(path) if path is not None else os.fspath(cache_dir() / "jax-compile")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclasses.dataclass
class GenerateResult:
    tokens: list[list[int]]  # generated ids per prompt, prompt excluded
    text: list[str] | None
    prompt_tokens: list[list[int]]
    stats: dict[str, Any]
    timing: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def process_mappings() -> int | None:
    """How many memory mappings this process holds (Linux: lines of /proc/self/maps), else None."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def mapping_limit() -> int | None:
    """The kernel's per-process limit on memory mappings (Linux: vm.max_map_count), else None."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CompiledCache:
    """Compiled programs, one per (decoder, bucket, mesh, ...); counts compilations.

    Least recently used entries are dropped beyond `capacity` entries, and while the process holds
    more than `map_share` of the kernel's memory-mapping limit: every XLA:CPU executable maps each
    of its kernels' code and data separately (a `gamma="auto"` program for SmolLM2 holds ~5,000
    mappings, a plain one ~1,500), and a process past Linux's default vm.max_map_count of 65,530
    aborts inside LLVM ("Unable to allocate section memory") on its next compilation; 3/4 of it
    leaves room for the next compile. The entry just built is always kept. `count_maps` /
    `map_limit` are injectable for tests."""

    def __init__(self, capacity: int = 24, *, map_share: float = 0.75, count_maps=process_mappings,
                 map_limit=mapping_limit):
        self.table: dict[Any, Any] = {}
        self.capacity = capacity
        self.map_share = map_share
        self.count_maps = count_maps
        self.map_limit = map_limit
        self.compilations = 0
        self.evicted_for_maps = 0

    def get_or_build(self, key, build):
        """The entry for `key`, built by `build()` (and timed) on a miss -> (entry, compile seconds).

        A build counts as a compilation even when JAX's persistent cache supplies the executable."""
        if key in self.table:
            self.table[key] = self.table.pop(key)  # most recently used goes last
            return self.table[key], 0.0
        started = time.perf_counter()
        entry = build()
        self.table[key] = entry
        self.compilations += 1
        while len(self.table) > self.capacity:
            self.table.pop(next(iter(self.table)))
        self._bound_mappings()
        return entry, time.perf_counter() - started

    def _bound_mappings(self) -> None:
        limit = self.map_limit()
        if not limit:
            return
        budget = int(limit * self.map_share)
        while len(self.table) > 1 and (self.count_maps() or 0) > budget:
            self.table.pop(next(iter(self.table)))
            self.evicted_for_maps += 1  # its executable unmaps as its last reference goes (measured)

    def clear(self) -> None:
        self.table.clear()


COMPILED = CompiledCache()


def encode_prompts(tokenizer, prompts, *, chat: bool) -> list[list[int]]:
    """Prompts (see `validate.prompts`: text, token ids, lists of those, a 2-D integer array) -> lists
    of token ids; a single prompt may be given bare."""
    out = []
    for i, p in enumerate(validate.prompts(prompts)):
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError("text prompts need a model with a tokenizer; pass token ids instead")
            validate.text(f"prompt {i}", p)
            if chat:
                text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                out.append(tokenizer.encode(text, add_bos=False))
            else:
                out.append(tokenizer.encode(p))
        else:
            out.append(p)
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


def per_prompt(name: str, value, n: int, single: type | tuple) -> list:
    """One value for all n prompts, or a list/tuple with exactly one per prompt -> a list of n."""
    if isinstance(value, single):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{name} has {len(value)} entries for {n} prompts; give one value for all of them "
                              "or a list with one per prompt")
        return list(value)
    raise ConfigError(f"{name} must be one value for all prompts or a list with one per prompt, "
                      f"got {type(value).__name__}")


def row_keys(seed, n: int, batch: int) -> jax.Array:
    """PRNG keys [batch]: an int seed s gives row b fold_in(key(s), b); a list gives row b key(seed[b]), so
    a row run alone with seed=[s] draws what it drew in the batch. Padding rows get unused keys."""
    if isinstance(seed, (list, tuple)):
        seeds = [validate.seed(f"seed[{i}]", x) for i, x in enumerate(per_prompt("seed", seed, n, int))]
        return jax.vmap(jax.random.key)(jnp.asarray(seeds + [0] * (batch - n), jnp.uint32))
    return sampling.row_keys(jax.random.key(validate.seed("seed", seed)), batch)


def one_device_mesh():
    """This process's first device (with several processes and no mesh, each decodes on its own)."""
    return shd.make_mesh(1, 1, devices=jax.local_devices()[:1])


@dataclasses.dataclass(frozen=True)
class Program:
    """A decoder compiled for one bucket on one mesh: `start` (prefill) and `run` (donates the state)."""

    decoder: Decoder
    mesh: Any
    start: Any
    run: Any
    param_shardings: Any
    draft_param_shardings: Any
    batch_shardings: Any
    plan: shd.Plan

    def place(self, params, draft_params, batch: Batch) -> tuple:
        """The arguments of `start`, on their shardings (no copy for arrays already there)."""
        return shd.place((params, draft_params, batch),
                         (self.param_shardings, self.draft_param_shardings, self.batch_shardings))

    def __call__(self, params, draft_params, batch: Batch):
        inputs = self.place(params, draft_params, batch)
        return self.run(inputs[0], inputs[1], self.start(*inputs))


def compile_program(decoder: Decoder, params, draft_params, batch: Batch, mesh, *, rules=None,
                    draft_rules=None) -> Program:
    """Lower and compile `decoder.start` and `decoder.run` for the shapes of `batch` (arrays or
    ShapeDtypeStructs), with shardings from the logical axes that params (`nnx.Param` metadata),
    the batch and the decode state (their types' `logical_axes`) declare."""
    rules = rules or shd.DEFAULT_RULES
    draft_rules = draft_rules or shd.REPLICATED_RULES
    plan = shd.Plan()
    p_sh = shd.param_shardings(params, mesh, rules, plan)
    d_sh = shd.param_shardings(draft_params, mesh, draft_rules, plan) if draft_params is not None else None
    batch_a = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    b_sh = shd.tree_shardings(batch_a, mesh, rules, plan)
    abstract = lambda tree, sh: jax.tree.map(  # noqa: E731
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    params_a = abstract(params, p_sh)
    draft_a = abstract(draft_params, d_sh) if draft_params is not None else None
    batch_a = abstract(batch_a, b_sh)
    state_shape = jax.eval_shape(decoder.start, params_a, draft_a, batch_a)
    # the drafter's state (e.g. a draft model's cache) follows the drafter's rules, the rest the target's
    state_sh = shd.tree_shardings(state_shape.replace(draft=None), mesh, rules, plan).replace(
        draft=shd.tree_shardings(state_shape.draft, mesh, draft_rules, plan))
    start_c = jax.jit(decoder.start, in_shardings=(p_sh, d_sh, b_sh), out_shardings=state_sh).lower(
        params_a, draft_a, batch_a).compile()
    run_c = jax.jit(decoder.run, in_shardings=(p_sh, d_sh, state_sh), out_shardings=state_sh,
                    donate_argnums=(2,)).lower(params_a, draft_a, abstract(state_shape, state_sh)).compile()
    return Program(decoder, mesh, start_c, run_c, p_sh, d_sh, b_sh, plan)


def _signature(tree) -> tuple:
    """Shapes, dtypes and static structure (e.g. the top-k bound) of a pytree: its compile key."""
    return (jax.tree.structure(tree),) + tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


class Sampler:
    """Decoding for one target and one drafter: call it with prompts and per-call settings.

        sampler = Sampler(target, draft="ngram:3", gamma=4)
        result = sampler(["Hello"], sampling=SamplingConfig(temperature=0.7), max_new_tokens=64)
        result = sampler(["Hi", "Bye"], sampling=[GREEDY, SamplingConfig(temperature=0.9, top_p=0.8)],
                         max_new_tokens=[16, 40], seed=[1, 2])  # per-row settings, same program

    target: a loaded model (`.module`, `.tokenizer`, e.g. `specjax.models.load(...)`).
    draft: None (autoregressive), a drafter string (see `specjax.drafters.registry`), a loaded draft
    model with the target's tokenizer, a loaded EAGLE-3 head (`specjax.models.load_eagle(DIR)`), or a
    (drafter, params) pair. load_model: resolves the NAME of `model:NAME` (the CLI passes
    `specjax.models.load`); load_head: reads the DIR of `eagle:DIR` (`specjax.models.load_eagle`). mesh: a `specjax.sharding.make_mesh(data,
    model)` mesh (default: one device); rules / draft_rules: logical-axis tables. verify: "batched"
    (one (G+1)-token target pass per round) or "stepwise" (G+1 one-token passes: greedy output equals
    plain greedy output bit for bit in any dtype, at about G+1 target steps per round).

    gamma: proposals per round (G), or "auto": each round picks its window in 0..gamma_max inside the
    loop (`specjax.policy`), from running acceptance estimates and the costs `specjax calibrate`
    measured for this machine, target, drafter and batch size (stated defaults without them).
    gamma_max: the bound under "auto" (default 8; 16 for prompt lookup). policy: keyword arguments
    for `specjax.policy.Policy` (prior, decay, ...); calibration: the calibration file to read.
    """

    def __init__(self, target, draft=None, *, gamma: int | str = 4, eos_ids: Sequence[int] | None = None, mesh=None,
                 rules=None, draft_rules=None, load_model=None, load_head=None, verify: str = "batched",
                 gamma_max: int | None = None, policy: dict | None = None, calibration: str | None = None):
        if not hasattr(target, "module"):
            hint = (f"; load it with specjax.models.load({target!r})" if isinstance(target, (str, os.PathLike))
                    else " such as specjax.models.load(...) returns")
            raise ConfigError(f"target must be a loaded model (with .module and .tokenizer){hint}, got "
                              f"{type(target).__name__}")
        gamma = policy_lib.parse_gamma(gamma)
        self.auto = gamma == "auto"
        if gamma_max is not None:
            gamma_max = validate.integer("gamma_max", gamma_max, low=1)
            if not self.auto:
                raise ConfigError("gamma_max bounds gamma='auto'; with a fixed gamma leave it out")
        self.policy_options = dict(policy or {})
        self.calibration = calibration
        if verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.verify = verify
        self.tokenizer = getattr(target, "tokenizer", None)
        if eos_ids is None:
            eos_ids = tuple(self.tokenizer.eos_ids) if self.tokenizer is not None else ()
        self.eos_ids = tuple(int(e) for e in eos_ids)
        enable_compile_cache()
        self.mesh = mesh if mesh is not None else one_device_mesh()
        # hashable and order-free, for the compile cache key
        self.rules = None if rules is None else tuple(dict(rules).items())
        self.draft_rules = None if draft_rules is None else tuple(dict(draft_rules).items())
        module = shd.prepare_for_mesh(target.module, self.mesh)
        self.lm, self.params = LM.split(module)
        self.vocab_rows = self.lm.config.vocab_size
        limit = self.tokenizer.vocab_size if self.tokenizer is not None else self.vocab_rows
        rows = self.vocab_rows  # the widest embedding in play: ids from `limit` up to it are never drawn
        self.drafter = self.draft_params = None
        self.gamma = 0
        if draft is not None:
            resolved = registry.resolve(draft, _Model(module, self.tokenizer), load_model=load_model,
                                        load_head=load_head)
            self.drafter, self.draft_params = resolved.drafter, resolved.params
            self.draft_label = drafter_label(draft, self.drafter, self.draft_params)
            if self.auto:
                once = getattr(self.drafter, "proposes_once", False)
                gamma = gamma_max or (policy_lib.DEFAULT_GAMMA_MAX_LOOKUP if once else policy_lib.DEFAULT_GAMMA_MAX)
            self.gamma = gamma
            if resolved.vocab_limit is not None:
                limit, rows = min(limit, resolved.vocab_limit), max(rows, resolved.rows or rows)
        elif self.auto:
            raise ConfigError("gamma='auto' needs a drafter")
        if self.auto:  # refuse bad policy options or a bad calibration file now, not at the first call
            try:
                self.window_policy(1, self.gamma)
            except TypeError as err:
                raise ConfigError(f"policy options {sorted(self.policy_options)}: {err}") from None
        self.vocab_limit = limit if limit < rows else None
        self._memory: dict[tuple, Any] = {}  # (batch, size) -> report.memory; ("request", ...) -> check_memory's

    def decoder(self, *, max_new_tokens: int, prompt_len: int, batch: int = 1) -> Decoder:
        """The static decoder for this prompt bucket, `batch` rows (the policy's costs under "auto") and a
        buffer that holds `max_new_tokens` (bucketed by `size_bucket`, so nearby lengths share it)."""
        # never more proposals per round than tokens wanted after the first (which the prefill emits)
        gamma = min(self.gamma, max(1, max_new_tokens - 1)) if self.drafter is not None else 0
        need = prompt_len + max_new_tokens + (1 if self.drafter is None else gamma + 2)
        policy = self.window_policy(batch, gamma) if self.auto else None
        return Decoder(lm=self.lm, size=size_bucket(need), vocab_size=self.vocab_limit, drafter=self.drafter,
                       gamma=gamma, verify=self.verify, policy=policy)

    def window_policy(self, batch: int, gamma_max: int):
        """The gamma="auto" policy for `batch` rows and windows up to `gamma_max` (`policy.auto_policy`)."""
        return policy_lib.auto_policy(
            model=model_label(self.lm, self.params), drafter=self.draft_label, batch=batch, gamma_max=gamma_max,
            draft_cost=float(getattr(self.drafter, "default_cost", policy_lib.DEFAULT_DRAFT_COST)),
            must_observe=getattr(self.drafter, "must_observe", False), path=self.calibration, **self.policy_options)

    def batch(self, ids: list[list[int]], *, sampling=None, max_new_tokens=64, seed=0, eos_ids=None,
              draft_ids: list[list[int]] | None = None, defer_draft_prompt: bool = False) -> Batch:
        """Host-side inputs for these tokenised prompts: padded to the buckets, settings per row.
        draft_ids: the prompts in a draft's own tokenizer (a drafter with `own_prompt`); by default the
        draft encoding of `ids` through its vocabulary map; defer_draft_prompt: leave it to
        `with_draft_prompt` (which pads it for the call's decoder)."""
        n = len(ids)
        prompt_bp, lengths_b, active_b = pad_batch(ids)
        B = prompt_bp.shape[0]
        if isinstance(sampling, (list, tuple)):
            configs = [SamplingConfig.coerce(c, f"sampling[{i}]")
                       for i, c in enumerate(per_prompt("sampling", sampling, n, ()))]
        else:
            configs = [SamplingConfig.coerce(sampling if sampling is not None else SamplingConfig())] * n
        max_new = per_prompt("max_new_tokens", max_new_tokens, n, (int, np.integer, float))
        listed = isinstance(max_new_tokens, (list, tuple))
        max_new = [validate.integer(f"max_new_tokens[{i}]" if listed else "max_new_tokens", m, low=1)
                   for i, m in enumerate(max_new)]
        eos = self.eos_ids if eos_ids is None else eos_ids
        eos_rows = (per_prompt("eos_ids", list(eos), n, tuple) if eos and isinstance(eos[0], (list, tuple))
                    else [tuple(eos)] * n)
        eos_rows = [tuple(int(e) for e in row) for row in eos_rows] + [()] * (B - n)
        slots = max([EOS_SLOTS] + [bucket(len(r)) for r in eos_rows])
        batch = Batch.make(prompt_bp, lengths_b, active=active_b, max_new_tokens=max_new + [1] * (B - n),
                           sampling=configs, eos_ids=eos_rows, keys=row_keys(seed, n, B), eos_slots=slots,
                           vocab_size=self.vocab_limit or self.vocab_rows)
        if getattr(self.drafter, "own_prompt", False) and not defer_draft_prompt:
            draft_ids = self.draft_prompts(None, ids) if draft_ids is None else draft_ids
            if len(draft_ids) != n:
                raise ConfigError(f"draft_ids has {len(draft_ids)} prompts for {n} prompts")
            draft_bp, draft_b, _ = pad_batch([list(p) for p in draft_ids])
            batch = batch.replace(draft_prompt=jnp.asarray(draft_bp), draft_lengths=jnp.asarray(draft_b))
        return batch

    def draft_prompts(self, prompts, ids: list[list[int]], *, chat: bool = False) -> list[list[int]]:
        """The prompts in a draft's own tokens (a drafter with `own_prompt`): text through the draft's
        tokenizer (and its own chat template: the conversation format it was trained on); token ids,
        or chat turns for a draft without a template, as the draft encoding of the target's ids
        (its vocabulary map), after the draft's BOS when its tokenizer adds one."""
        tok = self.drafter.tokenizer
        texts = prompts is not None and all(isinstance(p, str) for p in validate.prompts(prompts))
        if texts and tok is not None and (not chat or tok.chat_template):
            return encode_prompts(tok, prompts, chat=chat)
        bos = [tok.bos_id] if tok is not None and tok.add_bos and tok.bos_id is not None else []
        return [bos + self.drafter.vocab.encode(p) for p in ids]

    def with_draft_prompt(self, batch: Batch, draft_ids: list[list[int]], decoder: Decoder) -> Batch:
        """`batch` with the draft's prompt tokens, padded to a length bucket that its buffer for
        `decoder` holds (`CrossVocabDrafter.prompt_room`); a prompt longer than that is refused."""
        room = self.drafter.prompt_room(decoder.size, decoder.gamma)
        longest = max(len(p) for p in draft_ids)
        if longest > room:
            raise ConfigError(f"a prompt takes {longest} tokens in the draft's tokenizer, more than the {room} its "
                              f"buffer holds in this call (about twice the target's buffer); use a shorter prompt")
        width = min(size_bucket(max(longest, 1)), room)
        draft_bp = np.zeros((batch.prompt.shape[0], width), np.int32)
        lengths_b = np.ones((batch.prompt.shape[0],), np.int32)
        for i, p in enumerate(draft_ids):
            draft_bp[i, :len(p)] = p
            lengths_b[i] = len(p)
        return batch.replace(draft_prompt=jnp.asarray(draft_bp), draft_lengths=jnp.asarray(lengths_b))

    def program(self, decoder: Decoder, batch: Batch) -> tuple[Program, float]:
        """The compiled program for `decoder` and the shapes of `batch` (from the cache) -> (program, compile s)."""
        key = ("program", decoder, _signature(batch), self.mesh, self.rules, self.draft_rules,
               _signature(self.params), _signature(self.draft_params))
        return COMPILED.get_or_build(key, lambda: compile_program(
            decoder, self.params, self.draft_params, batch, self.mesh, rules=self.rules,
            draft_rules=self.draft_rules))

    def __call__(self, prompts, *, sampling: SamplingConfig | Sequence[SamplingConfig] | None = None,
                 max_new_tokens: int | Sequence[int] = 64, seed: int | Sequence[int] = 0, chat: bool = False,
                 eos_ids: Sequence[int] | Sequence[Sequence[int]] | None = None) -> GenerateResult:
        """Generate for `prompts` (text, or token ids). sampling, max_new_tokens, seed and eos_ids take one
        value for every prompt or a list with one per prompt; none of them causes a compilation.
        Randomness: see `row_keys` (seed=[s0, s1, ...] makes each row reproducible on its own)."""
        ids = encode_prompts(self.tokenizer, prompts, chat=chat)
        V = self.vocab_rows
        for i, p in enumerate(ids):
            if min(p) < 0 or max(p) >= V:
                raise ConfigError(f"prompt {i} has token ids outside [0, {V})")
        own = getattr(self.drafter, "own_prompt", False)
        batch = self.batch(ids, sampling=sampling, max_new_tokens=max_new_tokens, seed=seed, eos_ids=eos_ids,
                           defer_draft_prompt=own)
        self.check_context(ids, np.asarray(batch.max_new_tokens)[:len(ids)].tolist())
        decoder = self.decoder(max_new_tokens=int(np.max(np.asarray(batch.max_new_tokens))),
                               prompt_len=batch.prompt.shape[1], batch=batch.prompt.shape[0])
        if own:
            batch = self.with_draft_prompt(batch, self.draft_prompts(prompts, ids, chat=chat), decoder)
        self.check_memory(batch=batch.prompt.shape[0], prompt=batch.prompt.shape[1], length=decoder.size)
        before = COMPILED.compilations
        program, compile_s = self.program(decoder, batch)
        started = time.perf_counter()
        state = program(self.params, self.draft_params, batch)
        jax.block_until_ready(state.tokens)
        run_s = time.perf_counter() - started
        result = self._result(state, ids, compile_s, run_s)
        result.timing["compilations"] = COMPILED.compilations - before
        result.stats["memory"] = self.memory(batch=batch.prompt.shape[0], length=decoder.size,
                                             ring_slack=decoder.ring_slack(batch.prompt.shape[1]))
        if getattr(self.drafter, "vocab", None) is not None:  # a draft with another tokenizer
            result.stats["draft_vocabulary"] = self.drafter.vocab.summary()
        return result

    def check_context(self, ids: list[list[int]], max_new: list[int]) -> None:
        """Refuse, before anything compiles, a prompt whose tokens plus max_new_tokens exceed the
        target's context length (its learned positions, or the length its checkpoint declares)."""
        ctx = self.lm.config.context_length
        if ctx is None:
            return
        for i, (p, m) in enumerate(zip(ids, max_new)):
            if len(p) + m > ctx:
                raise ConfigError(f"prompt {i} has {len(p)} tokens and max_new_tokens is {m}: {len(p) + m} tokens "
                                  f"exceed the target's context length of {ctx} tokens")

    def check_memory(self, *, batch: int, prompt: int, length: int) -> None:
        """Refuse a call whose buffers alone clearly exceed the device's memory (`report.request_bytes`
        against `report.device_memory_bytes`), naming the estimate, instead of an allocator failure."""
        key = ("request", batch, prompt, length)
        if key not in self._memory:
            self._memory[key] = (report.device_memory_bytes(), report.request_bytes(
                self.lm, self.params, self.drafter, self.draft_params, batch=batch, prompt=prompt, length=length))
        have, need = self._memory[key]
        if have is None:
            return
        if need["total_bytes"] > have:
            gb = 2**30
            raise ConfigError(
                f"this call needs at least {need['total_bytes'] / gb:.1f} GiB (params "
                f"{need['target_param_bytes'] / gb:.1f}, KV caches {need['target_cache_bytes'] / gb:.1f}, drafter "
                f"{need['speculation_overhead_bytes'] / gb:.1f}, prefill attention scores "
                f"{need['prefill_scores_bytes'] / gb:.1f}) for {batch} rows of {length} slots, but the device has "
                f"{have / gb:.1f} GiB; use fewer prompts per call, shorter prompts or fewer new tokens")

    def memory(self, *, batch: int, length: int, ring_slack: int | None = None) -> dict:
        """`report.memory` of this target and drafter, computed once per (batch, length, ring_slack)."""
        if (batch, length, ring_slack) not in self._memory:
            self._memory[batch, length, ring_slack] = report.memory(
                self.lm, self.params, self.drafter, self.draft_params, batch=batch, length=length,
                ring_slack=ring_slack)
        return dict(self._memory[batch, length, ring_slack])

    def _result(self, state, ids, compile_s: float, run_s: float) -> GenerateResult:
        n = len(ids)
        state = state.replace(cache=None, draft=None, keys=None)  # only tokens, lengths and counters come back
        state = jax.tree.map(_host, state)
        out = [state.tokens[i, state.prompt_lengths[i]:state.lengths[i]].tolist() for i in range(n)]
        text = [self.tokenizer.decode(o) for o in out] if self.tokenizer is not None else None
        stats = report.statistics(state, n, speculative=self.drafter is not None)
        total = sum(len(o) for o in out)
        timing = {"compile_s": compile_s, "run_s": run_s, "tokens_per_s": total / run_s if run_s > 0 else 0.0}
        return GenerateResult(tokens=out, text=text, prompt_tokens=ids, stats=stats, timing=timing)


def drafter_label(draft, drafter, draft_params) -> str:
    """The drafter's identity in the calibration file: a drafter string in canonical form (ngram:3 and
    ngram:3:1 are one drafter), or for a drafter object its name and parameter count."""
    if isinstance(draft, str):
        spec = registry.parse(draft)
        if spec.kind == "ngram":
            return f"ngram:{spec.nmax}:{spec.nmin}"
        if spec.kind == "layerskip":
            return f"layerskip:{_ranges(getattr(drafter, 'layers', ()))}:{spec.cache}"
        return f"{spec.kind}:{spec.name}"
    leaves = [x for x in jax.tree.leaves(draft_params) if hasattr(x, "size")]
    size = sum(int(x.size) for x in leaves)
    dtypes = "+".join(sorted({str(x.dtype) for x in leaves}))
    return f"{getattr(drafter, 'name', type(drafter).__name__)}:{size}-{dtypes}" if leaves else drafter.name


def _ranges(ids) -> str:
    """(0, 1, 2, 5, 7, 8) -> "0-2,5,7-8"."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def model_label(lm: LM, params) -> str:
    """The target's identity in the calibration file: family, shape and parameter dtype."""
    c = lm.config
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)})
    return f"{c.family}-L{c.num_layers}-D{c.dim}-V{c.vocab_size}-{'+'.join(dtypes)}"


@dataclasses.dataclass
class _Model:
    module: Any
    tokenizer: Any


def _host(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as a full numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
