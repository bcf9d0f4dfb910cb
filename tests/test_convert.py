"""Conversion sources (HF dir, sharded, .bin, bf16, state dict, GGUF), save/load, and typed errors."""

from __future__ import annotations

import json
import pickle
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_VOCAB, make_tiny_hf

from specjax.errors import (
    CorruptFileError,
    MissingWeightError,
    ModelNotFoundError,
    UnexpectedWeightError,
    UnknownArchitectureError,
    WeightShapeError,
)
from specjax.models import Tokenizer, load, load_converted, save
from specjax.models.convert import iter_params
from specjax.models.sources import Checkpoint, open_checkpoint


def _params(model) -> dict:
    return {path: np.asarray(v) for path, v in iter_params(model)}


def _assert_same_params(a, b, exact=True):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype, k
        if exact:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))
        else:
            np.testing.assert_allclose(pa[k], pb[k], atol=1e-6, err_msg=str(k))


@pytest.fixture(scope="module")
def tiny():
    hf = make_tiny_hf("tinyllama-gqa")
    return hf, load(hf, progress=False)


def test_safetensors_dir_single_and_sharded(tiny, tmp_path):
    hf, ref = tiny
    hf.save_pretrained(tmp_path / "single")
    _assert_same_params(load(tmp_path / "single", progress=False), ref)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    _assert_same_params(load(tmp_path / "sharded", progress=False), ref)


def test_pytorch_bin_and_state_dict(tiny, tmp_path):
    hf, ref = tiny
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(hf.state_dict(), d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(hf.config.to_dict()))
    _assert_same_params(load(d, progress=False), ref)
    _assert_same_params(load((hf.state_dict(), hf.config), progress=False), ref)


def test_bf16_safetensors_read_without_torch_path(tiny, tmp_path):
    hf, _ = tiny
    hf16 = make_tiny_hf("tinyllama-gqa").to(torch.bfloat16)
    hf16.save_pretrained(tmp_path / "bf16")
    got = load(tmp_path / "bf16", progress=False)
    want = load(hf16, progress=False)  # state dict path: torch bf16 -> float32
    _assert_same_params(got, want)


def test_every_source_is_a_checkpoint_with_the_same_tensors(hf_dir, tmp_path):
    """One model written as safetensors, pytorch_model.bin, a state dict and GGUF: each reader
    satisfies `Checkpoint`, gives identical keys, shapes and tensors, and its own tokenizer."""
    from ggml_reference import write_gguf
    from safetensors.numpy import load_file

    state = load_file(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bin_dir / "pytorch_model.bin")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, bin_dir / name)
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(gguf_path, "llama", config, state, vocab=TINY_VOCAB)
    sources = {"hf_dir": hf_dir, "torch_bin": bin_dir, "state_dict": (state, config), "gguf": gguf_path}

    hf_tokenizer = Tokenizer.from_hf_dir(hf_dir)
    text = "hello world, the lazy dog"
    for reader, source in sources.items():
        ckpt = open_checkpoint(source)
        assert type(ckpt).__module__ == f"specjax.models.sources.{reader}"
        assert isinstance(ckpt, Checkpoint), reader
        assert isinstance(ckpt.origin, str) and ckpt.config["model_type"] == "llama", reader
        assert sorted(ckpt.keys()) == sorted(state), reader
        for key, want in state.items():
            got = np.asarray(ckpt.tensor(key), np.float32)
            assert ckpt.shape(key) == got.shape == want.shape, (reader, key)
            np.testing.assert_array_equal(got, want, err_msg=f"{reader}: {key}")
        tokenizer = ckpt.tokenizer()
        if reader == "state_dict":
            assert tokenizer is None
        elif reader == "gguf":  # the vocabulary write_gguf stores: <t0>, <t1>, ...
            assert tokenizer.vocab_size == TINY_VOCAB and tokenizer.token(7) == "<t7>"
        else:
            assert tokenizer.encode(text) == hf_tokenizer.encode(text) != [], reader
            assert tokenizer.eos_ids == hf_tokenizer.eos_ids, reader

    # `load` hands on whatever tokenizer the checkpoint carries
    assert load(bin_dir, progress=False).tokenizer.encode(text) == hf_tokenizer.encode(text)
    assert load((state, config), progress=False).tokenizer is None


def test_checkpoint_protocol_requires_every_member():
    class NoTokenizer:
        config, origin = {}, "x"

        def keys(self):
            return []

        def shape(self, key):
            return ()

        def tensor(self, key):
            return np.zeros(())

    assert not isinstance(NoTokenizer(), Checkpoint)
    NoTokenizer.tokenizer = lambda self: None
    assert isinstance(NoTokenizer(), Checkpoint)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_save_load_identical(tiny, tmp_path, dtype):
    hf, _ = tiny
    model = load(hf, dtype=dtype, progress=False)
    save(model, tmp_path / "out", progress=False)
    back = load(tmp_path / "out", progress=False)
    _assert_same_params(back, model)
    assert back.config == model.config
    tokens = jnp.arange(9)[None] % 50
    a, _ = model.module(tokens, jnp.arange(9)[None], model.module.init_cache(1, 16))
    b, _ = back.module(tokens, jnp.arange(9)[None], back.module.init_cache(1, 16))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.real
def test_real_smollm2_convert_save_load_identical(tmp_path):
    model = load("smollm2-135m-instruct", progress=False)
    save(model, tmp_path / "smol", progress=False)
    back = load_converted(tmp_path / "smol")
    _assert_same_params(back, model)
    assert back.tokenizer.encode("Hello, world!") == model.tokenizer.encode("Hello, world!")
    assert back.tokenizer.eos_ids == model.tokenizer.eos_ids
    assert back.tokenizer.chat_template == model.tokenizer.chat_template


# -- errors ------------------------------------------------------------------------------------

def test_unknown_architecture(tiny):
    hf, _ = tiny
    config = dict(hf.config.to_dict(), model_type="mamba", architectures=["MambaForCausalLM"])
    with pytest.raises(UnknownArchitectureError, match="mamba"):
        load((hf.state_dict(), config), progress=False)


def test_missing_weight_names_the_key(tiny):
    hf, _ = tiny
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(MissingWeightError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as err:
        load((state, hf.config), progress=False)
    assert err.value.key == "model.layers.1.mlp.up_proj.weight"


def test_unexpected_weight_names_the_key(tiny):
    hf, _ = tiny
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.extra_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(UnexpectedWeightError, match="extra_proj"):
        load((state, hf.config), progress=False)


def test_wrong_shape_names_key_and_shapes(tiny):
    hf, _ = tiny
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 64)
    with pytest.raises(WeightShapeError, match=r"k_proj.*\(32, 64\).*\(16, 64\)"):
        load((state, hf.config), progress=False)


def test_truncated_safetensors(tiny, tmp_path):
    hf, _ = tiny
    hf.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        load(tmp_path / "m", progress=False)


def test_truncated_and_malicious_pytorch_bin(tiny, tmp_path):
    hf, _ = tiny
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(hf.config.to_dict()))
    torch.save(hf.state_dict(), d / "pytorch_model.bin")
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="pytorch_model.bin"):
        load(d, progress=False)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled arbitrary code",))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CorruptFileError, match="pytorch_model.bin"):
        load(d, progress=False)


def test_unknown_builtin_name():
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load("no-such-model", progress=False)
