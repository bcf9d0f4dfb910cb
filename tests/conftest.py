"""Shared fixtures: tiny random HF models of every family, and the real models (loaded once)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

# Eight CPU devices for the sharding tests; single-device code runs on the first one.
jax.config.update("jax_num_cpu_devices", 8)
# Many tests compile the same program (the same tiny model, decoder and bucket): a persistent
# compilation cache turns every repeat into a load, for this process and for parallel workers.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), os.pardir, ".pytest_cache",
                                                            "jax-compilation-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from specjax.models import transformer as _transformer  # noqa: E402

# Blocks of 8 slots as well as the shipped sizes: the tiny models' caches (16-96 slots) then run the
# blocked attention path (several blocks, windows across block edges, fully visible blocks) in every
# exactness and distribution test, not only the caches of hundreds of slots real prompts need.
# Set before anything compiles (it is read when a program is traced).
_transformer.ATTN_BLOCKS = _transformer.ATTN_BLOCKS + (8,)

TINY_VOCAB = 101


# Test files whose tests share the session's real models (`real_model_cache`): one scheduling group,
# so that the models load once per run.
REAL_MODEL_FILES = ("test_real_models.py", "test_tokenizer.py")


# Seconds each scheduling unit took in a fresh run (`pytest -n 2 --durations=0`, empty compile cache,
# this 2-core machine, 2026-11-27, the Makefile's XLA flags): units are handed out longest first, so
# that the two workers finish together (ordering by number of tests left ~50 s of one worker idle at
# the end). A file not listed counts 3 s per test.
UNIT_SECONDS = {
    "tests/test_distribution.py": 142, "tests/test_spec_real.py": 107, "tests/test_loop.py": 83,
    "tests/test_distill.py": 66, "tests/test_sampler.py": 64, "tests/test_cli.py": 56, "tests/test_sharding.py": 54,
    "tests/test_policy.py": 40, "real-models": 36, "tests/test_eagle.py": 33, "tests/test_lm.py": 29,
    "tests/test_models.py": 27, "tests/test_drafters.py": 20, "tests/test_convert.py": 18, "tests/test_sampling.py": 17,
    "tests/test_rejection.py": 11, "tests/test_validate.py": 10, "tests/test_examples.py": 7, "tests/test_gguf.py": 6,
    "tests/test_report.py": 6, "tests/test_registry.py": 2, "tests/test_cache.py": 2, "tests/test_bench.py": 1,
}


def pytest_xdist_make_scheduler(config, log):
    """Scheduling for parallel runs (`pytest -n 2`, as `make test` runs them): every file is one unit
    that runs on one worker (its module fixtures are built once), and the files of REAL_MODEL_FILES
    form one unit together; units go out in collection order, longest first (`UNIT_SECONDS`). (`--dist loadgroup` with `xdist_group` marks did this before pytest 9.2,
    which silently stopped honouring the marks: pytest-dev/pytest-xdist#1386; every test was then
    scheduled on its own and module fixtures, real models included, were built on both workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False  # the collection order below decides (longest unit first)
    return FileGroups(config, log)


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "real-models" if path.rsplit("/", 1)[-1] in REAL_MODEL_FILES else path


def pytest_collection_modifyitems(config, items):
    """Units in order of their expected time (`UNIT_SECONDS`, longest first), and within a unit the
    tests on real models first."""
    counts: dict[str, int] = {}
    for item in items:
        counts[_unit(item.nodeid)] = counts.get(_unit(item.nodeid), 0) + 1

    def seconds(unit: str) -> float:
        return UNIT_SECONDS.get(unit, 3 * counts[unit])

    items.sort(key=lambda item: (-seconds(_unit(item.nodeid)), _unit(item.nodeid),
                                 item.get_closest_marker("real") is None,
                                 "real_model_cache" not in item.fixturenames))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tiny-model tests compile with XLA's optimisations mostly off (`jax_disable_most_optimizations`:
    about half the compile time of a decoding loop, and their runtime is negligible); tests marked
    `real` compile fully optimised programs, which run SmolLM2 about 2.6x faster, and so do tests
    marked `optimized` (the distribution tests' 20,000-row batches: 46 s optimised against 63 s
    unoptimised for their main matrix, measured). Set before the test's fixtures are built, and in
    the environment for the processes a test starts."""
    fast_compile = item.get_closest_marker("real") is None and item.get_closest_marker("optimized") is None
    jax.config.update("jax_disable_most_optimizations", fast_compile)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1" if fast_compile else "0"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop compiled programs after each test module: every CPU executable holds memory mappings,
    and one process running the whole suite would otherwise approach the kernel's map limit."""
    yield
    from specjax import sampler

    sampler.COMPILED.clear()
    jax.clear_caches()


def _tiny_configs():
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4)
    return {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_hidden_layers=3, num_key_value_heads=4,
                                                           tie_word_embeddings=True)),
        "llama3-rope-scaling": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            **common, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16})),
        "tinyllama-gqa": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            **common, num_hidden_layers=2, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=10000.0)),
        "mistral-gqa-window": lambda: tf.MistralForCausalLM(tf.MistralConfig(
            **common, num_hidden_layers=2, num_key_value_heads=2, sliding_window=5, tie_word_embeddings=False)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, num_hidden_layers=2, num_key_value_heads=2,
                                                          tie_word_embeddings=True)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, num_hidden_layers=2, num_key_value_heads=2,
                                                          head_dim=24, tie_word_embeddings=False)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, num_hidden_layers=4, num_key_value_heads=1, head_dim=32, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=24, rope_theta=1_000_000.0)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                         n_positions=64, bos_token_id=0, eos_token_id=1)),
    }


TINY_FAMILIES = list(_tiny_configs())


def make_tiny_hf(name: str, seed: int = 0):
    """A tiny random transformers model; every parameter (norms included) is perturbed so that a
    weight that is dropped, transposed or offset wrongly changes the logits."""
    import torch

    torch.manual_seed(seed)
    model = _tiny_configs()[name]().float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(params=TINY_FAMILIES)
def tiny_hf(request):
    return request.param, make_tiny_hf(request.param)


def torch_logits(model, tokens_bt: np.ndarray, lengths_b) -> np.ndarray:
    """Reference logits from transformers for right-padded rows of the given lengths."""
    import torch

    T = tokens_bt.shape[1]
    mask = np.array([[1] * n + [0] * (T - n) for n in lengths_b])
    with torch.no_grad():
        return model(torch.tensor(tokens_bt), attention_mask=torch.tensor(mask)).logits.float().numpy()


# -- a tiny HF model directory (config, safetensors, tokenizer.json) ----------------------------

@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A tiny HF model directory with a real tokenizer.json (a small BPE trained here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("hf")
    make_tiny_hf("llama").save_pretrained(d)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 10, trainer)
    assert tok.get_vocab_size() <= TINY_VOCAB
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return d


# -- real models -------------------------------------------------------------------------------

# Gemma 3 (262k vocabulary: transformers takes over a minute to load it) runs in `make test-all`;
# `make test` checks the real-model path end to end on SmolLM2, inside its 12-minute budget.
REAL_MODELS = ["smollm2-135m-instruct", pytest.param("gemma3-270m", marks=pytest.mark.slow)]


@pytest.fixture(scope="session")
def real_model_cache():
    return {}


def load_real(cache: dict, name: str):
    """(specjax LoadedModel, transformers model, transformers tokenizer), built once per session."""
    if name not in cache:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from specjax.models import load
        from specjax.models.hub import resolve

        path = resolve(name)
        ours = load(name, progress=False)
        ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        cache[name] = (ours, ref, tok)
    return cache[name]


# -- tiny engine models (no torch) -------------------------------------------------------------

class Tiny:
    """A tiny specjax model with the `.module` / `.tokenizer` shape of a loaded model."""

    def __init__(self, module, tokenizer=None):
        self.module, self.tokenizer = module, tokenizer


def tiny_lm(seed: int = 0, *, vocab: int = 64, layers: int = 2, scale: float = 1.0, family: str = "llama"):
    """A random tiny decoder built directly in NNX. `scale` multiplies every weight matrix so the
    next-token distributions are peaked and varied rather than near-uniform."""
    import jax
    from flax import nnx

    from specjax.models import RopeConfig, Transformer, TransformerConfig

    cfg = TransformerConfig(family=family, vocab_size=vocab, dim=32, mlp_dim=64, num_layers=layers, num_heads=4,
                            num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=10000.0), tie_embeddings=False)
    module = Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    state = jax.tree.map(lambda x: x * scale * 25 if x.ndim >= 2 else x, state)
    return Tiny(nnx.merge(graphdef, state))


def perturbed(model: "Tiny", seed: int, noise: float) -> "Tiny":
    """A copy of `model` with relative Gaussian noise on every parameter (a 'good draft')."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model.module)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + noise * x.std() * jax.random.normal(k, x.shape, x.dtype) if x.ndim >= 2 else x
              for x, k in zip(leaves, keys)]
    return Tiny(nnx.merge(graphdef, jax.tree.unflatten(tree, leaves)))


def as_dtype(model: "Tiny", dtype) -> "Tiny":
    """A copy of `model` with its float params (and its KV cache dtype) in `dtype`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model.module)
    state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    module = nnx.merge(graphdef, state)
    module.dtype = jnp.dtype(dtype)
    return Tiny(module, model.tokenizer)
