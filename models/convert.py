"""The conversion driver: any checkpoint source -> a validated Flax NNX `Transformer` (+ tokenizer).

Sources, each seen as "HF-named tensors plus an HF config dict":
  - an HF model directory: config.json plus *.safetensors (single, or sharded with an index),
    read with numpy (no torch), or pytorch_model.bin through `torch.load(weights_only=True)`;
  - an in-memory transformers model, or a state dict with its config;
  - a GGUF file (see `gguf.py`);
  - a built-in offline model by name (see `hub.py`);
  - a directory written by `save` (orbax params + config), loaded back without conversion.

Every weight is checked against the family's specs before it is used: a missing key, a key with
no place in the model, or a wrong shape raises a typed error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from specjax.errors import (
    ConversionError,
    CorruptFileError,
    MissingWeightError,
    ModelNotFoundError,
    UnexpectedWeightError,
    UnknownArchitectureError,
    WeightShapeError,
)

from . import gemma3, gpt2, llama, qwen
from .family import Family
from .tokenizer import Tokenizer
from .transformer import RopeConfig, Transformer, TransformerConfig

FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen.FAMILY, gemma3.FAMILY, gpt2.FAMILY)
_SPECJAX_CONFIG = "specjax_config.json"
_DTYPES = {"float32": jnp.float32, "f32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def family_for(hf_config: dict, origin: str = "config") -> Family:
    model_type = hf_config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    archs = hf_config.get("architectures") or []
    raise UnknownArchitectureError(
        f"unknown architecture in {origin}: model_type={model_type!r} architectures={archs}; "
        f"supported model types: {', '.join(known)}"
    )


def resolve_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConversionError(f"dtype {dtype!r} is not supported (choose from {', '.join(_DTYPES)})")
        return _DTYPES[dtype]
    return jnp.dtype(dtype)


# -- checkpoint sources ------------------------------------------------------------------------

class SafetensorsCheckpoint:
    """config.json plus one or more .safetensors files, read lazily with numpy."""

    def __init__(self, directory: Path, config: dict):
        from safetensors import SafetensorError, safe_open

        self.origin, self.config = str(directory), config
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        self._where: dict[str, tuple[Any, str, str]] = {}
        for name in files:
            path = directory / name
            if not path.exists():
                raise CorruptFileError(str(path), "listed in the index but missing")
            try:
                handle = safe_open(str(path), framework="numpy")
                keys = list(handle.keys())
            except (SafetensorError, OSError) as err:
                raise CorruptFileError(str(path), str(err)) from err
            for key in keys:
                dtype = handle.get_slice(key).get_dtype()
                self._where[key] = (handle, str(path), dtype)

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        handle, _, _ = self._where[key]
        return tuple(handle.get_slice(key).get_shape())

    def tensor(self, key: str) -> np.ndarray:
        handle, path, dtype = self._where[key]
        try:
            if dtype == "BF16":  # numpy has no bfloat16; read through jax, which does
                from safetensors import safe_open

                return np.asarray(safe_open(path, framework="flax").get_tensor(key)).astype(np.float32)
            return handle.get_tensor(key)
        except Exception as err:
            raise CorruptFileError(path, f"tensor {key!r} could not be read ({err})") from err


class TorchCheckpoint:
    """pytorch_model.bin (single or sharded), loaded with weights_only=True: no arbitrary unpickling."""

    def __init__(self, directory: Path, config: dict):
        try:
            import torch
        except ImportError as err:
            raise ConversionError(
                f"{directory} holds pytorch_model.bin weights; reading them needs torch "
                "(pip install torch) or a safetensors copy"
            ) from err
        self.origin, self.config = str(directory), config
        index = directory / "pytorch_model.bin.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["pytorch_model.bin"]
        self._tensors = {}
        for name in files:
            path = directory / name
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:  # UnpicklingError for forbidden objects, RuntimeError for truncation
                raise CorruptFileError(str(path), f"{type(err).__name__}: {err}") from err
            if not isinstance(state, dict):
                raise CorruptFileError(str(path), "does not hold a state dict")
            self._tensors.update(state)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def tensor(self, key: str) -> np.ndarray:
        return _torch_to_numpy(self._tensors[key])


class StateDictCheckpoint:
    """An in-memory transformers model, or a state dict (torch tensors or arrays) with its config."""

    def __init__(self, state: dict, config: dict, origin: str):
        self._tensors, self.config, self.origin = dict(state), dict(config), origin

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def tensor(self, key: str) -> np.ndarray:
        value = self._tensors[key]
        return np.asarray(value) if not hasattr(value, "detach") else _torch_to_numpy(value)


def _torch_to_numpy(t) -> np.ndarray:
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()  # exact: every bfloat16 is a float32
    return t.numpy()


def open_checkpoint(source) -> Any:
    """Any supported source -> an object with `config`, `origin`, `keys()`, `shape(k)`, `tensor(k)`."""
    if hasattr(source, "state_dict") and hasattr(source, "config"):  # a transformers model
        config = source.config.to_dict()
        return StateDictCheckpoint(source.state_dict(), config, origin=f"in-memory {type(source).__name__}")
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict):
        state, config = source
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return StateDictCheckpoint(state, config, origin="state dict")
    path = Path(source)
    if path.suffix == ".gguf" or (path.is_file() and path.read_bytes()[:4] == b"GGUF"):
        from .gguf import GGUFCheckpoint

        return GGUFCheckpoint(path)
    if not path.exists():
        raise ModelNotFoundError(f"no model at {path}")
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.exists():
            raise ModelNotFoundError(f"{path} has no config.json (an HF model directory needs one)")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptFileError(str(config_path), f"invalid JSON ({err})") from err
        if list(path.glob("*.safetensors")):
            return SafetensorsCheckpoint(path, config)
        if list(path.glob("pytorch_model*.bin")):
            return TorchCheckpoint(path, config)
        raise ModelNotFoundError(f"{path} has no *.safetensors or pytorch_model.bin weights")
    raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")


# -- conversion --------------------------------------------------------------------------------

def _layer_key(spec_key: str) -> re.Pattern:
    return re.compile(re.escape(spec_key).replace(r"\{i\}", r"(\d+)"))


def convert_state(ckpt, family: Family, cfg: TransformerConfig, *, progress: bool = True) -> dict:
    """Read, check and rearrange every weight: -> nested dict {path...: np.ndarray} in our layout."""
    specs = family.weight_specs(cfg)
    expected: dict[str, tuple] = {}
    for spec in specs:
        layers = range(cfg.num_layers) if spec.per_layer else [None]
        for i in layers:
            expected[spec.key.format(i=i) if i is not None else spec.key] = spec.shape
    present = set(ckpt.keys())
    for key in expected:
        if key not in present:
            raise MissingWeightError(key, ckpt.origin)
    extra = [k for k in ckpt.keys() if k not in expected and not family.is_ignored(k, cfg)]
    if extra:
        raise UnexpectedWeightError(sorted(extra), ckpt.origin)
    for key, shape in expected.items():
        got = ckpt.shape(key)
        if tuple(got) != tuple(shape):
            raise WeightShapeError(key, shape, got, ckpt.origin)

    out: dict = {}
    bar = tqdm(total=len(expected), desc="converting weights", unit="tensor", disable=not progress, leave=False)
    for spec in specs:
        if spec.per_layer:
            parts = [[] for _ in spec.targets]
            for i in range(cfg.num_layers):
                for slot, array in zip(parts, spec.split(ckpt.tensor(spec.key.format(i=i)))):
                    slot.append(np.asarray(array, np.float32))
                bar.update()
            arrays = [np.stack(p) for p in parts]
        else:
            arrays = [np.asarray(a, np.float32) for a in spec.split(ckpt.tensor(spec.key))]
            bar.update()
        for path, array in zip(spec.targets, arrays):
            node = out
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = array
    bar.close()
    return out


def abstract_model(cfg: TransformerConfig, dtype=jnp.float32) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(cfg, dtype=dtype, rngs=nnx.Rngs(0)))


def build_model(cfg: TransformerConfig, pure: dict, dtype=jnp.float32, origin: str = "checkpoint") -> Transformer:
    """Put converted arrays into a Transformer; every parameter must be filled with its exact shape."""
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype))
    flat_abstract = dict(nnx.to_flat_state(abstract))
    filled = {}
    for path, var in flat_abstract.items():
        node = pure
        for name in path:
            if not isinstance(node, dict) or name not in node:
                raise MissingWeightError("/".join(map(str, path)), origin)
            node = node[name]
        if tuple(node.shape) != tuple(var.value.shape):
            raise WeightShapeError("/".join(map(str, path)), var.value.shape, node.shape, origin)
        filled[path] = var.replace(jnp.asarray(node, dtype=var.value.dtype))
    state = nnx.from_flat_state(filled)
    return nnx.merge(graphdef, state)


@dataclasses.dataclass
class LoadedModel:
    """A converted model ready for the engine: the NNX module, its tokenizer and a display name."""

    name: str
    module: Transformer
    tokenizer: Tokenizer | None

    @property
    def config(self) -> TransformerConfig:
        return self.module.config

    def split(self):
        return nnx.split(self.module)

    @property
    def param_bytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(nnx.state(self.module, nnx.Param)))


def load(source, *, dtype=None, progress: bool = True, name: str | None = None) -> LoadedModel:
    """Load and convert a model from any supported source (see the module docstring).

    dtype: "float32" / "bfloat16" for the params; by default float32, or for a directory written
    by `save`, the dtype it was saved in.
    """
    from . import hub

    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source in hub.BUILTIN:
            return load(hub.resolve(source, progress=progress), dtype=dtype, progress=progress, name=source)
        path = Path(source)
        if path.is_dir() and (path / _SPECJAX_CONFIG).exists():
            return load_converted(path, dtype=dtype, name=name)
        if not path.exists() and not str(source).endswith(".gguf"):
            raise ModelNotFoundError(
                f"{source!r} is neither a file, a directory, nor a built-in model "
                f"(built-in: {', '.join(sorted(hub.BUILTIN))})"
            )
    ckpt = open_checkpoint(source)
    family = family_for(ckpt.config, ckpt.origin)
    cfg = family.config_from_hf(ckpt.config)
    pure = convert_state(ckpt, family, cfg, progress=progress)
    module = build_model(cfg, pure, resolve_dtype(dtype or "float32"), ckpt.origin)
    tokenizer = None
    if hasattr(ckpt, "reader"):
        tokenizer = Tokenizer.from_gguf(ckpt.field)
    elif isinstance(source, (str, os.PathLike)) and (Path(source) / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_hf_dir(source)
    return LoadedModel(name=name or str(getattr(ckpt, "origin", source)), module=module, tokenizer=tokenizer)


# -- save / load converted params --------------------------------------------------------------

def config_to_dict(cfg: TransformerConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> TransformerConfig:
    d = dict(d)
    for key in ("rope", "rope_local"):
        if d.get(key) is not None:
            rope = dict(d[key])
            rope["freq_factors"] = tuple(rope.get("freq_factors", ()))
            d[key] = RopeConfig(**rope)
    d["layer_kinds"] = tuple(d.get("layer_kinds", ()))
    return TransformerConfig(**d)


def save(model: LoadedModel, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write params (orbax), config and tokenizer to `out_dir`; `load(out_dir)` reads them back."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc="saving", unit="step", disable=not progress, leave=False)
    pure = nnx.to_pure_dict(nnx.state(model.module, nnx.Param))
    params_dir = out / "params"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(params_dir, pure, force=True)
    steps.update()
    meta = {"name": model.name, "dtype": str(model.module.dtype), "config": config_to_dict(model.config)}
    (out / _SPECJAX_CONFIG).write_text(json.dumps(meta, indent=1))
    steps.update()
    if model.tokenizer is not None:
        model.tokenizer.save(out / "tokenizer")
    steps.update()
    steps.close()
    return out


def load_converted(directory: str | os.PathLike, *, dtype=None, name: str | None = None) -> LoadedModel:
    import orbax.checkpoint as ocp

    d = Path(directory).absolute()
    meta = json.loads((d / _SPECJAX_CONFIG).read_text())
    cfg = config_from_dict(meta["config"])
    saved_dtype = jnp.dtype(meta["dtype"])
    graphdef, abstract = nnx.split(abstract_model(cfg, saved_dtype))
    target = nnx.to_pure_dict(abstract)
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), target)
    with ocp.StandardCheckpointer() as ckptr:
        pure = ckptr.restore(d / "params", target)
    nnx.replace_by_pure_dict(abstract, pure)
    module = nnx.merge(graphdef, abstract)
    if dtype is not None and jnp.dtype(resolve_dtype(dtype)) != saved_dtype:
        module = build_model(cfg, nnx.to_pure_dict(nnx.state(module, nnx.Param)), resolve_dtype(dtype), str(d))
    tok_dir = d / "tokenizer"
    tokenizer = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    return LoadedModel(name=name or meta.get("name", str(d)), module=module, tokenizer=tokenizer)


def truncate(model: LoadedModel, layers: int) -> LoadedModel:
    """A separate model made of `model`'s first `layers` blocks, its final norm and head (a copy).

    A ready-made same-tokenizer draft model; the layer-skip drafter shares weights instead."""
    cfg = model.config
    if not 1 <= layers <= cfg.num_layers:
        raise ConversionError(f"layers must be in [1, {cfg.num_layers}], got {layers}")
    small = dataclasses.replace(cfg, num_layers=layers, layer_kinds=cfg.layer_kinds[:layers])
    pure = nnx.to_pure_dict(nnx.state(model.module, nnx.Param))
    pure["blocks"] = jax.tree.map(lambda a: np.asarray(a)[:layers], pure["blocks"])
    return LoadedModel(name=f"{model.name}[:{layers}]", module=build_model(small, pure, model.module.dtype),
                       tokenizer=model.tokenizer)


def iter_params(model: LoadedModel) -> Iterable[tuple[tuple, jax.Array]]:
    for path, var in nnx.to_flat_state(nnx.state(model.module, nnx.Param)):
        yield path, var.value
