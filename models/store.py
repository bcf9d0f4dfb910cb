"""Converted models on disk: a directory holding the params as an orbax checkpoint (`params/`), the
`TransformerConfig`, name and dtype as JSON (`specjax_config.json`), and the tokenizer
(`tokenizer/`). `save` writes one; `load_converted` reads it back without any conversion.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from .convert import LoadedModel, abstract_model, build_model, resolve_dtype
from .tokenizer import Tokenizer
from .transformer import RopeConfig, TransformerConfig

SPECJAX_CONFIG = "specjax_config.json"  # its presence marks a directory written by `save`


def config_to_dict(cfg: TransformerConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> TransformerConfig:
    """Inverse of `config_to_dict`: JSON lists back to the tuples and RopeConfigs the dataclass holds."""
    d = dict(d)
    for key in ("rope", "rope_local"):
        if d.get(key) is not None:
            rope = dict(d[key])
            rope["freq_factors"] = tuple(rope.get("freq_factors", ()))
            d[key] = RopeConfig(**rope)
    d["layer_kinds"] = tuple(d.get("layer_kinds", ()))
    return TransformerConfig(**d)


def is_converted(directory: str | os.PathLike) -> bool:
    """Whether `directory` was written by `save`."""
    path = Path(directory)
    return path.is_dir() and (path / SPECJAX_CONFIG).exists()


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
    (out / SPECJAX_CONFIG).write_text(json.dumps(meta, indent=1))
    steps.update()
    if model.tokenizer is not None:
        model.tokenizer.save(out / "tokenizer")
    steps.update()
    steps.close()
    return out


def load_converted(directory: str | os.PathLike, *, dtype=None, name: str | None = None) -> LoadedModel:
    """Read a directory written by `save`; `dtype` recasts the params if it differs from the saved one."""
    import orbax.checkpoint as ocp

    d = Path(directory).absolute()
    meta = json.loads((d / SPECJAX_CONFIG).read_text())
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
