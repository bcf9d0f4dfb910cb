"""Distillation: losses against numpy, the draft vocabulary, the training-time-test unroll against the
decoding path, and a whole tiny recipe (training lowers the loss, resume equals an uninterrupted run,
export then load gives the same logits)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_lm

from specjax.distill import losses, vocab
from specjax.distill.eagle import ttt_outputs
from specjax.models import head_config_for, load, load_eagle, random_head


def _np_softmax(x, t=1.0):
    x = np.asarray(x, np.float64) / t
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_losses_equal_a_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 4, 7)) * 2
    target[0, 0, :3] = -np.inf  # ids the stored top-k left out
    draft = rng.normal(size=(3, 4, 7)) * 2
    for t in (1.0, 0.7):
        p, q = _np_softmax(target, t), _np_softmax(draft, t)
        logp, logq = np.log(np.where(p > 0, p, 1)), np.log(q)
        m = 0.3 * p + 0.7 * q
        want = {
            "soft_cross_entropy": -(p * logq).sum(-1),
            "forward_kl": (np.where(p > 0, p * (logp - logq), 0)).sum(-1),
            "reverse_kl": (q * (logq - np.where(p > 0, logp, -1e4))).sum(-1),
            "total_variation": 0.5 * np.abs(p - q).sum(-1),
            "jsd": 0.3 * np.where(p > 0, p * (logp - np.log(m)), 0).sum(-1) + 0.7 * (q * (logq - np.log(m))).sum(-1),
        }
        got = {"soft_cross_entropy": losses.soft_cross_entropy(target, draft, t),
               **{name: losses.divergence(name, target, draft, t, beta=0.3) for name in losses.DIVERGENCES}}
        for name, value in want.items():
            np.testing.assert_allclose(np.asarray(got[name]), value, rtol=2e-5, atol=2e-5, err_msg=f"{name} at T={t}")
    same = losses.divergence("forward_kl", draft, draft)
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)


def test_draft_vocabulary_maps_and_coverage():
    counts = vocab.count_tokens([[5, 5, 5, 2, 2, 9], [2, 7, 1]], 10)
    assert counts.tolist() == [0, 1, 3, 0, 0, 3, 0, 1, 0, 1]
    ids = vocab.most_frequent(counts, 3, always=[0])  # 0 forced (EOS), then 2 and 5 (tie: smaller id)
    assert ids.tolist() == [0, 2, 5]
    d2t, t2d = vocab.maps(ids, 10)
    assert (d2t + np.arange(3)).tolist() == [0, 2, 5] and t2d.tolist() == [i in (0, 2, 5) for i in range(10)]
    assert vocab.coverage(counts, ids) == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        vocab.count_tokens([[10]], 10)


def test_training_time_test_unroll_is_the_decoding_computation():
    """Step u of the unroll at entry t equals what the drafter computes at draft step u + 1 from a cache
    holding the step-0 entries 0 .. t: the training sees exactly what decoding does."""
    target = tiny_lm(0, vocab=32, layers=3)
    tcfg = target.module.config
    head = random_head(head_config_for(tcfg, draft_vocab_size=12, taps=(0, 1, 3)), seed=3, scale=3.0)
    lm, params = __import__("specjax.lm", fromlist=["LM"]).LM.split(target.module)
    T = 10
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, T)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(T), (2, T))
    _, _, taps = lm.forward(params, tokens, positions, lm.init_cache(params, 2, T), taps=(0, 1, 3))
    embed = target.module.embed.value
    outs = jax.jit(lambda taps, tokens: ttt_outputs(head, embed, taps, tokens, steps=3))(taps, tokens)  # [3,B,T-1,D]
    t = 4
    pos = jnp.where(jnp.arange(T - 1) <= t, jnp.arange(T - 1), -1)[None].repeat(2, 0)
    out0, cache = jax.jit(head.step)(embed[tokens[:, 1:]], head.fuse(taps[:, :, :T - 1]), pos, head.init_cache(2, 16))
    np.testing.assert_allclose(np.asarray(outs[0, :, :t + 1]), np.asarray(out0[:, :t + 1]), rtol=1e-4, atol=1e-4)
    hidden = out0[:, t]
    one_step = jax.jit(head.step)
    for u in (1, 2):
        hidden_b1d, cache = one_step(embed[tokens[:, t + 1 + u]][:, None], hidden[:, None], jnp.full((2, 1), t + u),
                                     cache)
        hidden = hidden_b1d[:, 0]
        np.testing.assert_allclose(np.asarray(outs[u, :, t]), np.asarray(hidden), rtol=1e-4, atol=1e-4,
                                   err_msg=f"unroll step {u}")


@pytest.fixture(scope="module")
def recipe_setup(hf_dir, tmp_path_factory):
    from specjax.distill.train import Recipe

    base = tmp_path_factory.mktemp("distill")
    (base / "prompts.yaml").write_text(json.dumps({"chat": False, "prompts": [
        "hello world", "the quick brown fox", "jumps over the lazy dog", "hello the dog", "brown fox world",
        "lazy world hello", "quick quick dog", "the the fox"]}))
    (base / "heldout.yaml").write_text(json.dumps({"chat": False, "prompts": ["the lazy fox", "world of dogs"]}))
    recipe = Recipe(name="tiny", target=str(hf_dir), prompts=(str(base / "prompts.yaml"),),
                    heldout_prompts=(str(base / "heldout.yaml"),), samples=2, temperature=1.0, max_new_tokens=12,
                    gen_batch=8, top_k=8, heldout_share=0.2, draft_vocab=40, steps=24, batch=4, length=24, lr=3e-3,
                    warmup=4, ttt_steps=3, log_every=4, eval_every=24, checkpoint_every=8, eval_prompts=2,
                    eval_max_new_tokens=8)
    return recipe, load(hf_dir, progress=False), base


def test_a_tiny_recipe_trains_resumes_exactly_and_exports(recipe_setup):
    from specjax.distill.train import run

    recipe, target, base = recipe_setup
    whole = run(recipe, base / "whole", progress=False, target=target)
    log = [json.loads(line) for line in (base / "whole" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["event"] == "train"]
    assert train[-1]["loss"] < 0.8 * train[0]["loss"], [r["loss"] for r in train]
    vocab_record = next(r for r in log if r["event"] == "vocab")
    assert vocab_record["size"] == 40 and 0 < vocab_record["coverage_heldout"] <= 1
    evals = [r for r in log if r["event"] == "eval"]
    assert evals and "acceptance_rate" in evals[-1] and evals[-1]["tokens_per_round"] >= 1

    # interrupted after 10 steps (last checkpoint at 8), then resumed: the same head as without a break
    # (the data directory is shared, so both runs train on the same sequences)
    (base / "split").mkdir()
    (base / "split" / "data").symlink_to(base / "whole" / "data")
    part = run(recipe, base / "split", progress=False, target=target, stop_after=10)
    assert part["step"] == 10 and "export" not in part
    resumed = run(recipe, base / "split", progress=False, target=target)
    assert resumed["step"] == recipe.steps
    for a, b in zip(jax.tree.leaves(whole["draft"]), jax.tree.leaves(resumed["draft"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # export, then load: the same logits
    loaded = load_eagle(whole["export"])
    h = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, loaded.config.dim)), jnp.float32)
    np.testing.assert_allclose(np.asarray(loaded.logits(h)), np.asarray(whole["draft"].logits(h)), rtol=1e-6)
    assert np.array_equal(np.asarray(loaded.target_ids.value), np.asarray(whole["draft"].target_ids.value))

    # on the clock (train_minutes): ends by time, not steps, with the learning rate decayed to its floor;
    # interrupted and resumed, the budget continues (the first part's seconds are counted)
    timed = dataclasses.replace(recipe, steps=10**6, train_minutes=0.15, warmup=1, log_every=1, checkpoint_every=4,
                                eval_every=10**6, heldout_prompts=())
    (base / "timed").mkdir()
    (base / "timed" / "data").symlink_to(base / "whole" / "data")
    first = run(timed, base / "timed", progress=False, target=target, stop_after=4)
    assert first["step"] == 4 and "export" not in first
    rest = run(timed, base / "timed", progress=False, target=target)
    assert 4 < rest["step"] < timed.steps and rest["export"]
    assert rest["train_seconds_total"] >= 60 * timed.train_minutes > rest["train_seconds_total"] - rest["train_seconds"] > 0
    # every step's rate is the schedule at the clock when the step began, which lies between the end of
    # the step logged before it and its own end (read from the log; robust to a loaded machine, where a
    # single step may span much of the 9-second budget and the floor itself is never logged)
    from specjax.distill.train import lr_at

    records = [r for r in map(json.loads, (base / "timed" / "log.jsonl").read_text().splitlines())
               if r["event"] == "train"]
    budget, before = 60 * timed.train_minutes, 0.0
    for r in records:
        latest, earliest = (lr_at(timed, r["step"] - 1, t / budget) for t in (r["elapsed_s"], before))
        assert latest * (1 - 1e-6) <= r["lr"] <= earliest * (1 + 1e-6), (r, before, records)
        before = r["elapsed_s"]
    lrs = [r["lr"] for r in records]
    assert max(lrs) > 0.5 * recipe.lr and lrs[-1] < max(lrs), lrs  # warmed up, then decayed by the clock


def test_device_resident_data_trains_the_same_head_and_a_run_can_start_from_a_trained_head(recipe_setup):
    from specjax.distill.data import Dataset, DeviceData
    from specjax.distill.train import run

    recipe, target, base = recipe_setup
    short = dataclasses.replace(recipe, steps=6, warmup=1, eval_every=10**6, checkpoint_every=10**6,
                                heldout_prompts=(), length=16)  # some sequences are longer: windows are cut
    (base / "host").mkdir()
    if (base / "whole" / "data" / "index.json").exists():  # the tiny recipe test's data, when it ran first
        (base / "host" / "data").symlink_to(base / "whole" / "data")
    host = run(short, base / "host", progress=False, target=target)
    data = base / "host" / "data"

    # the device gather equals the host gather, window for window (padding and cut windows included)
    full = Dataset(data)
    assert max(np.diff(full.offsets)) > short.length > min(np.diff(full.offsets))
    windows = full.windows(np.random.default_rng(3), 8, short.length)
    for feats in (True, False):
        want = full.gather(windows, features=feats)
        got = DeviceData(full, features=feats).gather(windows)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)

    # so training from device-resident data gives the very same head
    (base / "dev").mkdir()
    (base / "dev" / "data").symlink_to(data)
    dev = run(dataclasses.replace(short, device_data=True), base / "dev", progress=False, target=target)
    assert any(json.loads(line)["event"] == "device_data" for line in (base / "dev" / "log.jsonl").read_text().splitlines())
    for a, b in zip(jax.tree.leaves(host["draft"]), jax.tree.leaves(dev["draft"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # init_head: the run starts from the exported head's weights and keeps its draft vocabulary
    (base / "cont").mkdir()
    (base / "cont" / "data").symlink_to(data)
    cont = dataclasses.replace(short, init_head=host["export"], draft_vocab=7)
    start = run(cont, base / "cont", progress=False, target=target, stop_after=0)["draft"]
    loaded = load_eagle(host["export"])
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept = json.loads((base / "cont" / "vocab.json").read_text())
    assert kept["target_ids"] == np.asarray(loaded.target_ids.value).tolist() and kept["size"] == recipe.draft_vocab
    with pytest.raises(Exception, match="init_head starts an EAGLE-3 head"):
        dataclasses.replace(short, kind="draft_model", init_head=host["export"])


def test_time_budgeted_learning_rate_warms_up_then_decays_with_the_clock():
    from specjax.distill.train import Recipe, lr_at

    r = Recipe(name="r", target="t", lr=1e-3, warmup=4, train_minutes=1)
    assert [round(lr_at(r, s, 0.0) / r.lr, 6) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    rates = [lr_at(r, 100, f) for f in np.linspace(0, 1, 11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.05 * r.lr) and lr_at(r, 100, 2.0) == rates[-1]
    with pytest.raises(Exception, match="train_minutes must be a number >= 0"):
        Recipe(name="r", target="t", train_minutes=-1)


def test_recipe_settings_are_checked(tmp_path):
    from specjax.distill.train import Recipe
    from specjax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"warmup must be an integer in \[0, steps = 6\), got 30"):
        Recipe(name="r", target="t", steps=6, warmup=30)
    with pytest.raises(ConfigError, match="ttt_steps must be an integer >= 1"):
        Recipe(name="r", target="t", ttt_steps=0)
    (tmp_path / "r.yaml").write_text("target: t\ntrain: {steps: 10, warmpu: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['warmpu'\]"):
        Recipe.from_yaml(tmp_path / "r.yaml")


@pytest.mark.parametrize("family", ["llama", "llama3-rope-scaling", "tinyllama-gqa"])
def test_a_draft_model_exports_as_an_hf_directory_transformers_and_specjax_load(family, tmp_path):
    """init_draft keeps the chosen target blocks; save_hf writes a directory whose logits in
    transformers and in specjax equal the draft's own."""
    import transformers as tf
    from conftest import make_tiny_hf, torch_logits

    from specjax.distill.draft import init_draft
    from specjax.models.export import save_hf

    torch_model = make_tiny_hf(family)
    target = load(torch_model, progress=False)
    draft = init_draft(target, (1, 0) if target.config.num_layers > 1 else (0,))
    assert draft.config.num_layers == 2
    np.testing.assert_array_equal(np.asarray(draft.module.blocks.q.value[0]), np.asarray(target.module.blocks.q.value[1]))
    out = save_hf(draft, tmp_path / "draft")
    tokens = np.random.default_rng(0).integers(0, draft.config.vocab_size, (2, 9))
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    ours = np.asarray(draft.module(jnp.asarray(tokens), positions, draft.module.init_cache(2, 9))[0])
    theirs = torch_logits(tf.AutoModelForCausalLM.from_pretrained(out).float().eval(), tokens, [9, 9])
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    again = load(out, progress=False)
    np.testing.assert_allclose(np.asarray(again.module(jnp.asarray(tokens), positions, again.module.init_cache(2, 9))[0]),
                               ours, rtol=1e-6, atol=1e-6)


def test_draft_layers_are_checked():
    from specjax.distill.draft import default_layers, init_draft
    from specjax.errors import ConfigError

    assert default_layers(30) == (0, 10, 19, 29) and default_layers(2) == (0, 1)
    with pytest.raises(ConfigError, match=r"distinct block indices in \[0, 2\)"):
        init_draft(tiny_lm(0, layers=2), (0, 2))


def test_each_divergence_trains_a_draft_model_toward_the_target():
    """distill_loss under each divergence (target logits computed in the step): a few AdamW steps on a
    two-layer draft of a three-layer target lower the loss and the draft's total-variation distance."""
    import optax
    from flax import nnx

    from specjax.distill.draft import distill_loss, init_draft

    target = tiny_lm(0, vocab=32, layers=3, scale=3.0)
    start = init_draft(target, (0, 2))
    graphdef, params0, rest = nnx.split(start.module, nnx.Param, ...)
    tgraph, tstate = nnx.split(target.module)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 32, (4, 12)), jnp.int32),
             "prompt_lengths": jnp.asarray([3, 1, 5, 0], jnp.int32), "lengths": jnp.asarray([12, 12, 9, 12], jnp.int32)}
    opt = optax.adam(3e-2)
    for name in losses.DIVERGENCES:
        def loss_fn(p, tstate):
            return distill_loss(nnx.merge(graphdef, p, rest), nnx.merge(tgraph, tstate), batch, divergence=name,
                                temperature=0.8, beta=0.3)

        @jax.jit
        def step(p, o, tstate):
            (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tstate)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o, loss, m

        p, o = params0, opt.init(params0)
        first = None
        for _ in range(15):
            p, o, loss, m = step(p, o, tstate)
            if first is None:
                first, accept0 = float(loss), float(m["accept_t1"])
        _, _, last, m = step(p, o, tstate)
        assert float(last) < 0.7 * first, (name, first, float(last))
        assert float(m["accept_t1"]) > accept0, (name, accept0, float(m["accept_t1"]))


def test_a_tiny_draft_model_recipe_trains_and_exports_a_model_draft(recipe_setup, tmp_path):
    """kind: draft_model end to end: training lowers the loss, held-out acceptance is measured by real
    speculative decoding, and the exported HF directory runs as a `model:` draft, exactly."""
    import dataclasses

    from specjax import api
    from specjax.distill.train import run

    recipe, target, base = recipe_setup
    recipe = dataclasses.replace(recipe, kind="draft_model", draft_layers=(0, 2), divergence="jsd",
                                 distill_temperature=0.8, beta=0.3, steps=12, lr=1e-2, warmup=2, log_every=2,
                                 eval_every=4)
    data = base / "whole" / "data"
    if data.exists():  # the tiny EAGLE recipe's data set (built earlier in this module): reuse it
        (tmp_path / "data").symlink_to(data)
    summary = run(recipe, tmp_path, progress=False, target=target)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # held-out loss on the same fixed batches at steps 4, 8 and 12 (training-batch losses differ by batch)
    held = [r["heldout_loss"] for r in log if r["event"] == "eval"]
    assert len(held) == 3 and held[-1] < 0.95 * held[0], held
    assert [r for r in log if r["event"] == "eval"][-1]["tokens_per_round"] >= 1
    draft = load(summary["export"], progress=False)
    res = api.generate(target, ["hello world"], draft=draft, gamma=3, max_new_tokens=8, chat=False)
    plain = api.generate(target, ["hello world"], max_new_tokens=8, chat=False)
    assert res.tokens == plain.tokens


def test_the_loss_counts_prompt_positions_only_when_asked():
    """ttt_loss(on_prompt=True) also trains on the target's distribution at prompt positions; with no
    prompt the two masks are the same."""
    from specjax.distill.eagle import ttt_loss

    target = tiny_lm(0, vocab=16, layers=2)
    head = random_head(head_config_for(target.module.config, draft_vocab_size=16, taps=(0, 1, 2)), seed=1, scale=3.0)
    rng = np.random.default_rng(0)
    B, T, k = 2, 9, 4
    logits = rng.normal(size=(B, T, 16)) * 3
    top = np.argsort(-logits, -1)[..., :k]
    batch = {"tokens": jnp.asarray(rng.integers(0, 16, (B, T)), jnp.int32),
             "taps": jnp.asarray(rng.normal(size=(3, B, T, 32)), jnp.float32),
             "topk_ids": jnp.asarray(top, jnp.int32), "topk_logits": jnp.asarray(np.take_along_axis(logits, top, -1)),
             "prompt_lengths": jnp.asarray([5, 4], jnp.int32), "lengths": jnp.asarray([9, 9], jnp.int32)}
    index = jnp.arange(16, dtype=jnp.int32)

    def loss(b, on_prompt):
        return float(ttt_loss(head, target.module.embed.value, b, steps=2, draft_index_v=index, on_prompt=on_prompt)[0])

    assert loss(batch, True) != pytest.approx(loss(batch, False), rel=1e-4)
    no_prompt = dict(batch, prompt_lengths=jnp.asarray([0, 0], jnp.int32))
    assert loss(no_prompt, True) == pytest.approx(loss(no_prompt, False), rel=1e-6)


def _chat_model(hf_dir, eos_ids=None):
    """The tiny model with a chat template (and, optionally, other EOS ids) on a copy of its tokenizer."""
    import copy
    import types

    target = load(hf_dir, progress=False)
    tok = copy.copy(target.tokenizer)
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>{% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant :{% endif %}")
    if eos_ids is not None:
        tok.eos_ids = tuple(eos_ids)
    return types.SimpleNamespace(module=target.module, tokenizer=tok), target


def test_self_written_prompts_are_the_targets_own_finished_user_messages(hf_dir):
    from specjax.config import SamplingConfig
    from specjax.distill.data import generate_self_prompts, user_turn_prefix
    from specjax.errors import ConfigError
    from specjax.sampler import Sampler

    # an eighth of the vocabulary ends a message: some messages finish within 6 tokens, some do not
    chat, plain = _chat_model(hf_dir, eos_ids=range(0, 64, 8))
    prefix = user_turn_prefix(chat.tokenizer)
    assert prefix == chat.tokenizer.encode("<s> user :", add_bos=False)
    got = generate_self_prompts(chat, 24, max_tokens=6, seed=3, batch=8, progress=False)
    # the same draws made directly: messages that ended in an EOS id, decoded, stripped, first copy kept
    seeds = [int(np.random.SeedSequence([3, 1, r]).generate_state(1)[0]) for r in range(24)]
    eos = set(chat.tokenizer.eos_ids)
    sampler, want, unfinished = Sampler(chat, None), [], 0
    for start in range(0, 24, 8):
        res = sampler([prefix] * 8, sampling=SamplingConfig(temperature=1.0, top_p=0.95), max_new_tokens=6,
                      seed=seeds[start:start + 8], eos_ids=sorted(eos))
        for toks in res.tokens:
            finished = bool(toks) and toks[-1] in eos
            unfinished += not finished
            text = chat.tokenizer.decode(toks[:-1]).strip() if finished else ""
            if text and (text, True) not in want:
                want.append((text, True))
    assert got == want
    assert unfinished > 0 and len(want) > 0  # both cases occur: the filter is exercised
    with pytest.raises(ConfigError, match="no chat template"):
        generate_self_prompts(plain, 4, progress=False)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        generate_self_prompts(chat, 4, temperature=0.0, progress=False)


def test_responses_take_one_pass_per_temperature(hf_dir):
    from specjax.config import SamplingConfig
    from specjax.distill.data import generate_responses
    from specjax.errors import ConfigError
    from specjax.sampler import Sampler

    target = load(hf_dir, progress=False)
    prompts = [("hello world", False), ("the quick brown fox jumps", False), ("lazy dog", False)]
    seqs = generate_responses(target, prompts, samples=2, temperature=[0.0, 1.0], max_new_tokens=5, batch=4,
                              progress=False, seed=1)
    assert len(seqs) == 3 + 3 * 2
    sampler = Sampler(target, None)
    greedy = sampler([p for p, _ in prompts], max_new_tokens=5)
    by_prompt: dict = {}
    for p, r in seqs:
        by_prompt.setdefault(tuple(p), []).append(r)
    for p, r in zip(greedy.prompt_tokens, greedy.tokens):
        assert r in by_prompt[tuple(p)]  # the greedy pass: each prompt's greedy answer
        assert len(by_prompt[tuple(p)]) == 3
    # a sampled answer draws with seed (seed, sample, prompt, pass)
    s = int(np.random.SeedSequence([1, 1, 2, 1]).generate_state(1)[0])
    one = sampler(["lazy dog"], sampling=SamplingConfig(temperature=1.0), max_new_tokens=5, seed=[s])
    assert one.tokens[0] in by_prompt[tuple(one.prompt_tokens[0])]
    with pytest.raises(ConfigError, match="temperature must be a number >= 0"):
        generate_responses(target, prompts, temperature=[0.0, -1.0], progress=False)


def test_recipe_data_settings_are_checked(tmp_path):
    from specjax.distill.train import Recipe
    from specjax.errors import ConfigError

    (tmp_path / "r.yaml").write_text("target: t\ndata: {temperature: [0.0, 0.7], self_prompts: 5}\n")
    r = Recipe.from_yaml(tmp_path / "r.yaml")
    assert r.temperatures == (0.0, 0.7) and r.self_prompts == 5
    with pytest.raises(ConfigError, match="temperature a number >= 0 or a non-empty list"):
        Recipe(name="r", target="t", temperature=(0.5, -0.1))
    with pytest.raises(ConfigError, match="temperature must be a number or a list of numbers"):
        Recipe(name="r", target="t", temperature=("hot",))
    with pytest.raises(ConfigError, match="self_prompts must be an integer >= 0"):
        Recipe(name="r", target="t", self_prompts=-2)
    with pytest.raises(ConfigError, match="self_prompt_temperature must be > 0"):
        Recipe(name="r", target="t", self_prompts=3, self_prompt_temperature=0.0)
