"""The conversion: HF-named tensors and an HF config dict -> a validated Flax NNX `Transformer`.

`load` accepts any source `sources.open_checkpoint` reads (an HF directory of safetensors or
pytorch_model.bin, an in-memory transformers model or state dict, a GGUF file), a built-in model
name (resolved by `hub`), or a directory written by `store.save` (read back without conversion).
The family is chosen by the config's `model_type`; the family's specs say which tensor goes where.

Every weight is checked against the family's specs before it is used: a missing key, a key with
no place in the model, or a wrong shape raises a typed error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from specjax.errors import (
    ConversionError,
    MissingWeightError,
    ModelNotFoundError,
    UnexpectedWeightError,
    UnknownArchitectureError,
    WeightShapeError,
)

from . import gemma3, gpt2, hub, llama, qwen
from .family import Family
from .sources import Checkpoint, open_checkpoint
from .tokenizer import Tokenizer
from .transformer import Transformer, TransformerConfig

FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen.FAMILY, gemma3.FAMILY, gpt2.FAMILY)
_DTYPES = {"float32": jnp.float32, "f32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def family_for(hf_config: dict, origin: str = "config") -> Family:
    """The family whose model types include the config's `model_type`; `origin` names the source in errors."""
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


def storage_dtype(dtype, what: str):
    """float32 / float16 / bfloat16 (a name or dtype) -> the numpy type a writer stores weights in."""
    import ml_dtypes

    store = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(str(jnp.dtype(dtype)))
    if store is None:
        raise ConversionError(f"{what}: dtype {dtype!r} must be float32, float16 or bfloat16")
    return store


def resolve_dtype(dtype) -> Any:
    """A dtype name ("float32", "f32", "bfloat16", "bf16") or a dtype -> the jnp dtype."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConversionError(f"dtype {dtype!r} is not supported (choose from {', '.join(_DTYPES)})")
        return _DTYPES[dtype]
    return jnp.dtype(dtype)


# -- conversion --------------------------------------------------------------------------------

def convert_state(ckpt: Checkpoint, family: Family, cfg: TransformerConfig, *, progress: bool = True) -> dict:
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
    """A Transformer of `cfg` whose params are shapes and dtypes only (nothing allocated)."""
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
    from .store import is_converted, load_converted  # store builds on this module: import at call time

    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source in hub.BUILTIN:
            return load(hub.resolve(source, progress=progress), dtype=dtype, progress=progress, name=source)
        if is_converted(source):
            return load_converted(source, dtype=dtype, name=name)
        if not Path(source).exists() and not str(source).endswith(".gguf"):
            raise ModelNotFoundError(
                f"{source!r} is neither a file, a directory, nor a built-in model "
                f"(built-in: {', '.join(sorted(hub.BUILTIN))})"
            )
    ckpt = open_checkpoint(source)
    family = family_for(ckpt.config, ckpt.origin)
    cfg = family.config_from_hf(ckpt.config)
    pure = convert_state(ckpt, family, cfg, progress=progress)
    module = build_model(cfg, pure, resolve_dtype(dtype or "float32"), ckpt.origin)
    return LoadedModel(name=name or ckpt.origin, module=module, tokenizer=ckpt.tokenizer())


def truncate(model: LoadedModel, layers: int) -> LoadedModel:
    """A separate model made of `model`'s first `layers` blocks, its final norm and head (a copy).

    A ready-made same-tokenizer draft model; the layer-skip drafter shares weights instead."""
    cfg = model.config
    if not 1 <= layers <= cfg.num_layers:
        raise ConversionError(f"layers must be in [1, {cfg.num_layers}], got {layers}")
    return LoadedModel(name=f"{model.name}[:{layers}]", module=select_blocks(model.module, range(layers)),
                       tokenizer=model.tokenizer)


def select_blocks(module: Transformer, blocks) -> Transformer:
    """A separate Transformer (a copy) of `module`'s embedding, the blocks at indices `blocks` in that
    order, its final norm and head. The caller checks the indices."""
    blocks = list(blocks)
    cfg = module.config
    small = dataclasses.replace(cfg, num_layers=len(blocks),
                                layer_kinds=tuple(cfg.layer_kinds[i] for i in blocks) if cfg.layer_kinds else ())
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    pure["blocks"] = jax.tree.map(lambda a: np.asarray(a)[blocks], pure["blocks"])
    return build_model(small, pure, module.dtype)


def iter_params(model: LoadedModel) -> Iterable[tuple[tuple, jax.Array]]:
    """Every parameter of `model` as (path in the module, array)."""
    for path, var in nnx.to_flat_state(nnx.state(model.module, nnx.Param)):
        yield path, var.value
