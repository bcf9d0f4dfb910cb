"""`specjax distill`: a recipe (YAML) -> data, a draft vocabulary, a trained EAGLE-3 head, its export.

    specjax distill configs/distill/smollm2_eagle3.yaml [--out DIR]

Steps, each skipped when its output already exists under DIR (so an interrupted run resumes):
  1. data      the target answers the recipe's prompts (specjax batched decoding), then one target
               pass per sequence stores its tapped features and top-k logits (`data.extract`);
               a share of the sequences (`heldout_share`) is held out: training never sees them
  2. vocab     the N most frequent response tokens of the training split (EOS ids always kept);
               coverage on the held-out split is reported (`vocab.json`)
  3. train     AdamW with linear warm-up and cosine decay, gradient clipping, one jitted step over
               the training-time-test loss (`distill.eagle.ttt_loss`); a tqdm bar with loss, the
               head's top-1 agreement, tokens/s and ETA; orbax checkpoints every `checkpoint_every`
               steps (resume continues exactly: batch s is drawn from (seed, s) alone); every
               `eval_every` steps the held-out loss and, by real speculative decoding on the held-out
               prompts, the acceptance rate and tokens per round at G = `eval_gamma`.
               With `train_minutes` > 0 training ends on the clock instead (at most `steps` steps),
               the learning rate decaying over the elapsed share of the budget (`lr_at`): one
               recipe then fits a time slot on any hardware (a lent GPU, this CPU).
               `init_head` continues from a trained head (its draft vocabulary kept); `device_data`
               holds the data in accelerator memory and gathers batches there (`data.DeviceData`)
  4. export    the head in the community EAGLE-3 layout (`DIR/head`), loadable with `eagle:DIR/head`

Everything is written under DIR (default `distill/<recipe name>`): data/, vocab.json, checkpoints/,
log.jsonl (one line per logged step and evaluation), head/, summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from specjax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    target: str
    kind: str = "eagle3"  # "eagle3" (a head) or "draft_model" (a small model of the target's family)
    dtype: str = "float32"
    # data
    prompts: tuple = ()
    heldout_prompts: tuple = ()  # prompts for the acceptance evaluation, never in the training data
    samples: int = 1
    temperature: float | tuple = 0.0  # one pass over the prompts per value (0 = greedy, once per prompt)
    self_prompts: int = 0  # this many more training prompts written by the target itself (chat models)
    self_prompt_temperature: float = 1.0
    self_prompt_top_p: float = 0.95
    self_prompt_max_tokens: int = 64
    max_new_tokens: int = 256
    gen_batch: int = 16
    top_k: int = 64
    heldout_share: float = 0.05
    # draft
    draft_vocab: int = 8192  # eagle3: the draft vocabulary's size
    taps: tuple = ()  # eagle3: the target layers whose features the head reads (default (2, L/2, L-3))
    draft_layers: tuple = ()  # draft_model: the target blocks it starts from (default: 4 spread out)
    divergence: str = "forward_kl"  # draft_model: one of losses.DIVERGENCES
    distill_temperature: float = 1.0  # draft_model: both distributions are compared at this temperature
    beta: float = 0.5  # draft_model: JSD(beta)'s mixture weight
    export_dtype: str = "float32"
    # training
    steps: int = 1000
    batch: int = 8
    length: int = 384
    lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.0
    clip: float = 0.5
    ttt_steps: int = 5
    decay: float = 0.8
    loss_on_prompt: bool = False  # the loss also counts prompt positions (the target's distribution is defined there)
    init_from_target: bool = True  # the head's LM head and final norm start as the target's (see warm_start)
    init_head: str = ""  # eagle3: start from this trained head (a name or directory); its draft vocabulary is kept
    device_data: bool = False  # hold the training data in accelerator memory, batches gathered there (DeviceData)
    train_minutes: float = 0.0  # > 0: training ends after this much wall-clock time (see lr_at)
    extract_batch: int = 4  # sequences per target pass when the features are extracted
    extract_bucket: int = 64  # ... padded to a multiple of this many tokens (one compiled program each)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 250
    eval_prompts: int = 8
    eval_max_new_tokens: int = 64
    eval_gamma: int = 4

    def __post_init__(self):
        for name in ("samples", "max_new_tokens", "gen_batch", "top_k", "steps", "batch", "length", "ttt_steps",
                     "log_every", "checkpoint_every", "eval_prompts", "eval_max_new_tokens", "eval_gamma",
                     "extract_batch", "extract_bucket"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"distill recipe {self.name!r}: {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ConfigError(f"distill recipe {self.name!r}: warmup must be an integer in [0, steps = {self.steps}), "
                              f"got {self.warmup!r}")
        if self.kind not in ("eagle3", "draft_model"):
            raise ConfigError(f"distill recipe {self.name!r}: kind must be 'eagle3' or 'draft_model', got {self.kind!r}")
        from specjax.distill.losses import DIVERGENCES

        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"distill recipe {self.name!r}: divergence {self.divergence!r} is not one of "
                              f"{', '.join(DIVERGENCES)}")
        if self.distill_temperature <= 0 or not 0 < self.beta < 1:
            raise ConfigError(f"distill recipe {self.name!r}: distill_temperature must be > 0 and beta in (0, 1) "
                              f"(got {self.distill_temperature}, {self.beta})")
        if self.export_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"distill recipe {self.name!r}: export_dtype must be float32, float16 or bfloat16, "
                              f"got {self.export_dtype!r}")
        if isinstance(self.train_minutes, bool) or not isinstance(self.train_minutes, (int, float)) \
                or not self.train_minutes >= 0:
            raise ConfigError(f"distill recipe {self.name!r}: train_minutes must be a number >= 0 (0: train for "
                              f"`steps`), got {self.train_minutes!r}")
        if not isinstance(self.device_data, bool) or not isinstance(self.init_head, str):
            raise ConfigError(f"distill recipe {self.name!r}: device_data must be true or false and init_head a head's "
                              f"name or directory (got {self.device_data!r}, {self.init_head!r})")
        if self.init_head and self.kind != "eagle3":
            raise ConfigError(f"distill recipe {self.name!r}: init_head starts an EAGLE-3 head; kind is {self.kind!r}")
        if not 0.0 <= self.heldout_share < 1.0:
            raise ConfigError(f"distill recipe {self.name!r}: heldout_share must lie in [0, 1), got {self.heldout_share}")
        temps = self.temperatures
        if self.lr <= 0 or self.clip <= 0 or not 0 < self.decay <= 1 or not temps or min(temps) < 0:
            raise ConfigError(f"distill recipe {self.name!r}: lr and clip must be > 0, decay in (0, 1], temperature "
                              f"a number >= 0 or a non-empty list of them (got lr={self.lr}, clip={self.clip}, "
                              f"decay={self.decay}, temperature={self.temperature!r})")
        if not isinstance(self.self_prompts, int) or self.self_prompts < 0 or self.self_prompt_max_tokens < 1:
            raise ConfigError(f"distill recipe {self.name!r}: self_prompts must be an integer >= 0 and "
                              f"self_prompt_max_tokens >= 1 (got {self.self_prompts!r}, {self.self_prompt_max_tokens!r})")
        if self.self_prompts and (self.self_prompt_temperature <= 0 or not 0 < self.self_prompt_top_p <= 1):
            raise ConfigError(f"distill recipe {self.name!r}: self_prompt_temperature must be > 0 and "
                              f"self_prompt_top_p in (0, 1] (got {self.self_prompt_temperature}, "
                              f"{self.self_prompt_top_p})")

    @property
    def temperatures(self) -> tuple:
        t = self.temperature
        values = tuple(t) if isinstance(t, (list, tuple)) else (t,)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"distill recipe {self.name!r}: temperature must be a number or a list of numbers, "
                              f"got {t!r}")
        return tuple(float(v) for v in values)

    @classmethod
    def from_yaml(cls, path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"distill recipe {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"distill recipe {path}: invalid YAML ({err})") from err
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict) and key in ("data", "draft", "train", "eval"):
                flat.update(value)
            else:
                flat[key] = value
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flat) - fields)
        if unknown:
            raise ConfigError(f"distill recipe {path}: unknown keys {unknown}; known: {sorted(fields)}")
        for key in ("prompts", "heldout_prompts"):
            if key in flat:
                flat[key] = tuple(_resolve(p, path.parent) for p in flat[key])
        for key in ("taps", "draft_layers"):
            if key in flat:
                flat[key] = tuple(flat[key])
        if isinstance(flat.get("temperature"), list):
            flat["temperature"] = tuple(flat["temperature"])
        flat.setdefault("name", path.stem)
        if "target" not in flat:
            raise ConfigError(f"distill recipe {path}: 'target' is required")
        return cls(**flat)


def _resolve(src, base: Path):
    """A relative prompt file is looked up next to the recipe, then from the working directory."""
    if isinstance(src, str) and not Path(src).is_absolute() and (base / src).exists():
        return str(base / src)
    return src


def _log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def prepare_data(recipe: Recipe, target, out: Path, taps, progress: bool = True) -> Path:
    from specjax.distill import data

    directory = out / "data"
    if (directory / "index.json").exists():
        return directory
    prompts = data.load_prompts(recipe.prompts)
    started = time.perf_counter()
    written = []
    if recipe.self_prompts:
        written = data.generate_self_prompts(target, recipe.self_prompts, temperature=recipe.self_prompt_temperature,
                                             top_p=recipe.self_prompt_top_p, max_tokens=recipe.self_prompt_max_tokens,
                                             seed=recipe.seed, batch=recipe.gen_batch, progress=progress)
        (out / "self_prompts.yaml").write_text(yaml.safe_dump({"chat": True, "prompts": [t for t, _ in written]},
                                                              allow_unicode=True, sort_keys=False))
        prompts = prompts + written
    prompted = time.perf_counter()
    sequences = data.generate_responses(target, prompts, samples=recipe.samples, temperature=recipe.temperatures,
                                        seed=recipe.seed, max_new_tokens=recipe.max_new_tokens,
                                        batch=recipe.gen_batch, progress=progress)
    generated = time.perf_counter()
    data.extract(target, sequences, directory, taps=taps, top_k=recipe.top_k, batch=recipe.extract_batch,
                 bucket=recipe.extract_bucket, name=recipe.target, progress=progress)
    _log(out / "log.jsonl", {"event": "data", "sequences": len(sequences), "self_prompts": len(written),
                             "self_prompts_s": prompted - started,
                             "tokens": sum(len(p) + len(r) for p, r in sequences),
                             "response_tokens": sum(len(r) for _, r in sequences),
                             "generate_s": generated - prompted, "extract_s": time.perf_counter() - generated})
    return directory


def split_rows(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of n sequences: a fixed random share held out (at least one)."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    k = max(1, int(round(n * share))) if n > 1 else 0
    return np.sort(order[k:]), np.sort(order[:k])


def build_vocab(recipe: Recipe, train_set, heldout_set, vocab_size: int, eos_ids, out: Path,
                fixed: np.ndarray | None = None) -> np.ndarray:
    """The draft vocabulary (the most frequent training tokens; `fixed`: given, e.g. by the head the
    run starts from) and its coverage report in `vocab.json`."""
    from specjax.distill import vocab

    path = out / "vocab.json"
    if path.exists():
        return np.asarray(json.loads(path.read_text())["target_ids"], np.int64)
    counts = vocab.count_tokens(train_set.response_tokens(), vocab_size)
    if fixed is None:
        size = min(recipe.draft_vocab or vocab_size, vocab_size)
        target_ids = vocab.most_frequent(counts, size, always=eos_ids)
    else:
        target_ids = np.asarray(fixed, np.int64)
        size = len(target_ids)
    held = vocab.count_tokens(heldout_set.response_tokens(), vocab_size)
    report = {"target_ids": target_ids.tolist(), "size": int(size),
              "coverage_train": vocab.coverage(counts, target_ids), "coverage_heldout": vocab.coverage(held, target_ids),
              "distinct_train_tokens": int((counts > 0).sum())}
    path.write_text(json.dumps(report))
    _log(out / "log.jsonl", {"event": "vocab", **{k: v for k, v in report.items() if k != "target_ids"}})
    return target_ids


def warm_start(head, target_module) -> None:
    """Start the head's LM head as the target's output projection restricted to the draft vocabulary
    (columns target_ids), and its final norm as the target's where both are plain RMSNorms: the head
    then begins in the target's output geometry instead of learning the projection (4.7M weights for
    an 8k vocabulary of width 576) from scratch. Nothing is copied when the widths differ."""
    tcfg = target_module.config
    if head.config.dim != tcfg.dim:
        return
    ids = jnp.asarray(head.target_ids.value)
    table = target_module.embed.value.T if tcfg.tie_embeddings else target_module.lm_head.value  # [D, V]
    head.lm_head.value = jnp.take(table, ids, axis=1).astype(head.lm_head.value.dtype)
    if tcfg.norm == "rms":
        head.final_norm.scale.value = target_module.final_norm.scale.value.astype(head.final_norm.scale.value.dtype)


def lr_at(recipe: Recipe, step: int, fraction: float) -> float:
    """The learning rate of a time-budgeted run (`train_minutes` > 0): linear warm-up over the first
    `warmup` steps, then cosine decay from `lr` to 5% of it over the elapsed share `fraction` of the
    time budget, so the run ends decayed whatever the hardware's speed."""
    warm = min(1.0, (step + 1) / max(recipe.warmup, 1))
    fraction = min(max(fraction, 0.0), 1.0)
    return float(recipe.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + np.cos(np.pi * fraction))))


def make_optimizer(recipe: Recipe):
    import optax

    if recipe.train_minutes:  # the learning rate is an input of each step (see lr_at), set from the clock
        return optax.chain(optax.clip_by_global_norm(recipe.clip),
                           optax.inject_hyperparams(optax.adamw)(learning_rate=recipe.lr,
                                                                 weight_decay=recipe.weight_decay))
    schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.lr, max(recipe.warmup, 1), max(recipe.steps, recipe.warmup + 2),
                                                  end_value=recipe.lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(recipe.clip),
                       optax.adamw(schedule, weight_decay=recipe.weight_decay))


def run(recipe: Recipe, out=None, *, progress: bool = True, target=None, stop_after: int | None = None) -> dict:
    """The whole recipe (see the module docstring) -> summary dict. `stop_after`: stop training after
    that many steps of this call (tests use it to interrupt and resume)."""
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx

    from specjax import api
    from specjax.distill.data import Dataset, DeviceData, load_prompts
    from specjax.distill.eagle import ttt_loss
    from specjax.models import head_config_for, load, load_eagle, random_head, save_eagle

    out = Path(out or Path("distill") / recipe.name).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if target is None:
        target = load(recipe.target, dtype=recipe.dtype, progress=progress)
    tcfg = target.module.config
    cfg0 = head_config_for(tcfg, draft_vocab_size=tcfg.vocab_size, taps=tuple(recipe.taps))
    taps = cfg0.taps_for(tcfg.num_layers)
    data_dir = prepare_data(recipe, target, out, taps, progress)
    full = Dataset(data_dir)
    train_rows, held_rows = split_rows(len(full), recipe.heldout_share, recipe.seed)
    train_set, held_set = Dataset(data_dir, train_rows), Dataset(data_dir, held_rows)
    if recipe.kind == "eagle3":
        eos = tuple(target.tokenizer.eos_ids) if getattr(target, "tokenizer", None) is not None else ()
        if recipe.init_head:  # continue training a head: its weights and its draft vocabulary
            head = load_eagle(recipe.init_head, dtype=recipe.dtype)
            hc = head.config
            if (hc.dim, hc.vocab_size, tuple(hc.taps_for(tcfg.num_layers))) != (tcfg.dim, tcfg.vocab_size, tuple(taps)):
                raise ConfigError(f"distill recipe {recipe.name!r}: init_head {recipe.init_head!r} (width {hc.dim}, "
                                  f"vocabulary {hc.vocab_size}, taps {hc.taps_for(tcfg.num_layers)}) does not fit "
                                  f"{recipe.target} (width {tcfg.dim}, vocabulary {tcfg.vocab_size}, taps {taps})")
            target_ids = build_vocab(recipe, train_set, held_set, tcfg.vocab_size, eos, out,
                                     fixed=np.asarray(head.target_ids.value))
        else:
            target_ids = build_vocab(recipe, train_set, held_set, tcfg.vocab_size, eos, out)
            head = random_head(head_config_for(tcfg, draft_vocab_size=len(target_ids), taps=taps), seed=recipe.seed,
                               target_ids=target_ids, dtype=recipe.dtype)
            if recipe.init_from_target:
                warm_start(head, target.module)
        graphdef, params, rest = nnx.split(head, nnx.Param, ...)
        draft_index = np.full((tcfg.vocab_size,), -1, np.int32)
        draft_index[target_ids] = np.arange(len(target_ids))
        # the embedding table and the id map are arguments, not constants baked into the compiled step
        aux = (target.module.embed.value, jnp.asarray(draft_index))

        def loss_fn(p, batch, aux):
            return ttt_loss(nnx.merge(graphdef, p, rest), aux[0], batch, steps=recipe.ttt_steps, decay=recipe.decay,
                            draft_index_v=aux[1], on_prompt=recipe.loss_on_prompt)

        def as_draft(p):
            return nnx.merge(graphdef, p, rest)

        def export(p) -> Path:
            return save_eagle(as_draft(p), out / "head", dtype=recipe.export_dtype)
    else:
        from specjax.distill.draft import default_layers, distill_loss, init_draft
        from specjax.models import LoadedModel
        from specjax.models.export import save_hf

        layers = recipe.draft_layers or default_layers(tcfg.num_layers)
        start = init_draft(target, layers)
        graphdef, params, rest = nnx.split(start.module, nnx.Param, ...)
        target_graph, target_state = nnx.split(target.module)
        aux = target_state  # the target's weights: an argument of the step, not a constant

        def loss_fn(p, batch, aux):
            return distill_loss(nnx.merge(graphdef, p, rest), nnx.merge(target_graph, aux), batch,
                                divergence=recipe.divergence, temperature=recipe.distill_temperature,
                                beta=recipe.beta)

        def as_draft(p):
            return LoadedModel(name=start.name, module=nnx.merge(graphdef, p, rest), tokenizer=target.tokenizer)

        def export(p) -> Path:
            return save_hf(as_draft(p), out / "draft", dtype=recipe.export_dtype)

    optimizer = make_optimizer(recipe)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(p, opt_state, batch, aux):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, aux)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, metrics

    eval_loss = jax.jit(loss_fn)
    features = recipe.kind == "eagle3"  # a draft model reads tokens only

    manager = ocp.CheckpointManager(out / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2))
    step = 0
    budget = 60.0 * recipe.train_minutes  # seconds of training (0: none; train for `steps`)
    spent = 0.0  # training seconds before this call (a resumed time-budgeted run continues its budget)
    started = time.perf_counter()  # reset when the training loop starts

    def elapsed() -> float:
        """Training seconds of the whole run so far (earlier calls included)."""
        return spent + time.perf_counter() - started

    def state():
        tree = {"params": params, "opt_state": opt_state}
        if budget:
            tree["spent"] = np.asarray(elapsed(), np.float64)
        return tree

    if manager.latest_step() is not None:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.StandardRestore(state()))
        params, opt_state = restored["params"], restored["opt_state"]
        spent = float(restored["spent"]) if budget else 0.0

    heldout = load_prompts(recipe.heldout_prompts)[:recipe.eval_prompts] if recipe.heldout_prompts else []

    def evaluate(p) -> dict:
        rng = np.random.default_rng([recipe.seed, 99])
        losses = [float(eval_loss(p, held_set.batch(rng, recipe.batch, recipe.length, features=features), aux)[0])
                  for _ in range(2)]
        record = {"event": "eval", "step": step, "heldout_loss": float(np.mean(losses))}
        if heldout:
            trained = as_draft(p)
            stats = {"accepted": 0, "drafted": 0, "rounds": 0, "tokens": 0}
            for chat in (True, False):
                texts = [t for t, c in heldout if c == chat]
                if not texts:
                    continue
                res = api.generate(target, texts, draft=trained, gamma=recipe.eval_gamma, chat=chat,
                                   max_new_tokens=recipe.eval_max_new_tokens)
                stats["accepted"] += sum(res.stats["accepted"])
                stats["drafted"] += sum(res.stats["drafted"])
                stats["rounds"] += sum(res.stats["rounds"])
                stats["tokens"] += sum(len(t) for t in res.tokens)
            record["acceptance_rate"] = stats["accepted"] / max(stats["drafted"], 1)
            record["tokens_per_round"] = (stats["tokens"] - len(heldout)) / max(stats["rounds"], 1)
        return record

    from tqdm.auto import tqdm

    trains = step < recipe.steps and stop_after != 0  # (a data-only call places nothing on the device)
    device = DeviceData(train_set, features=features) if recipe.device_data and trains else None
    if device is not None:
        _log(out / "log.jsonl", {"event": "device_data", "bytes": device.nbytes})
    bar = tqdm(total=None if budget else recipe.steps, initial=step, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    started, tokens_seen, done_here = time.perf_counter(), 0, 0
    log = out / "log.jsonl"

    def out_of_time() -> bool:
        return bool(budget) and elapsed() >= budget

    while step < recipe.steps and not out_of_time() and (stop_after is None or done_here < stop_after):
        windows = train_set.windows(np.random.default_rng([recipe.seed, step]), recipe.batch, recipe.length)
        batch = device.gather(windows) if device is not None else train_set.gather(windows, features=features)
        if budget:  # the learning rate follows the clock (lr_at), fed to the step as an input
            lr = lr_at(recipe, step, elapsed() / budget)
            hyper = opt_state[1].hyperparams
            opt_state = (opt_state[0], opt_state[1]._replace(
                hyperparams={**hyper, "learning_rate": jnp.asarray(lr, jnp.asarray(hyper["learning_rate"]).dtype)}))
        params, opt_state, loss, metrics = train_step(params, opt_state, batch, aux)
        step += 1
        done_here += 1
        tokens_seen += int(windows.lengths.sum())
        bar.update(1)
        if step % recipe.log_every == 0 or step == recipe.steps:
            rate = tokens_seen / (time.perf_counter() - started)
            m = {k: float(v) for k, v in metrics.items()}
            bar.set_postfix(loss=f"{float(loss):.3f}", acc0=f"{m['acc0']:.2f}", tok_s=f"{rate:.0f}")
            record = {"event": "train", "step": step, "loss": float(loss), "tokens_per_s": rate, **m}
            if budget:  # read back from the optimizer's state: the rate the step was given
                record["lr"] = float(opt_state[1].hyperparams["learning_rate"])
                record["elapsed_s"] = elapsed()
            _log(log, record)
        finished = step == recipe.steps or out_of_time()
        if step % recipe.checkpoint_every == 0 or finished:
            manager.save(step, args=ocp.args.StandardSave(state()))
        if recipe.eval_every and (step % recipe.eval_every == 0 or finished):
            record = evaluate(params)
            _log(log, record)
            bar.write(json.dumps(record))
    bar.close()
    manager.wait_until_finished()
    trained = as_draft(params)
    summary = {"kind": recipe.kind, "step": step, "out": str(out), "train_seconds": time.perf_counter() - started}
    if budget:
        summary["train_seconds_total"] = elapsed()
    if step >= recipe.steps or out_of_time():
        summary["export"] = str(export(params))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {**summary, "draft": trained}
