"""Sharding the decode over a device mesh: logical axis names, one rules table, NamedShardings.

Mesh axes: `data` (batch rows) and `model` (attention heads, MLP width, vocabulary).

Logical axes, as the model zoo annotates its parameters (`nnx.Param(..., axes=(...))`), plus the
leading `layers` axis of stacked blocks:
  vocab, embed, q_heads, kv_heads, head_dim, mlp, norm, positions, layers
and for caches and decode state, as their types declare them (`logical_axes()` of `KVCache`,
`SpecState`, `SpecStats`):
  batch, seq (cache slots / token buffer), plus kv_heads, head_dim, layers.

`DEFAULT_RULES` maps them to mesh axes. A rules table that sends two logical axes of one array to
the same mesh axis is refused. A dimension that the mesh axis does not divide evenly is replicated
instead (reported by `plan`), except kv heads, which are first repeated up to the model axis when
the model has fewer kv heads than that axis has devices (grouped-query attention): each device then
holds exactly the kv heads its query heads read, with no communication in attention.

Target and drafter: layer skip runs on the target's own (sharded) params; a separate draft model is
replicated over `model` (its cache still follows `data`): a draft model is small, and it runs G
sequential single-token steps per round, so the two all-reduces per layer that tensor parallelism
would add to every draft step cost more latency than recomputing its small matmuls on every device.
Pass `draft_rules=DEFAULT_RULES` to shard it like the target instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from specjax.errors import ConfigError

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("head_dim", None),
    ("layers", None),
    ("seq", None),
    ("norm", None),
    ("positions", None),
)
REPLICATED_RULES = tuple((name, "data" if name == "batch" else None) for name, _ in DEFAULT_RULES)


class ShardingRuleError(ConfigError):
    """A rules table that cannot shard an array (e.g. two of its axes on one mesh axis)."""


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over the first data*model devices (all processes' devices when
    running multi-host), with automatic (GSPMD) sharding propagation."""
    devices = list(devices if devices is not None else jax.devices())
    if data * model > len(devices):
        raise ConfigError(f"mesh {data}x{model} needs {data * model} devices, only {len(devices)} are visible")
    grid = np.asarray(devices[: data * model]).reshape(data, model)
    return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass
class Plan:
    """Where each array goes, and which dimensions fell back to replication."""

    fallbacks: list[str] = dataclasses.field(default_factory=list)


def spec_for(name: str, logical: tuple, shape: tuple, mesh: Mesh, rules, plan: Plan | None = None) -> PartitionSpec:
    table = dict(rules)
    used: dict[str, str] = {}
    out = []
    for axis, size in zip(logical, shape):
        mesh_axis = table.get(axis) if axis is not None else None
        if mesh_axis is not None:
            if mesh_axis in used:
                raise ShardingRuleError(
                    f"rules map both {used[mesh_axis]!r} and {axis!r} of {name} {tuple(logical)} to mesh axis "
                    f"{mesh_axis!r}")
            used[mesh_axis] = axis
            if size % mesh.shape[mesh_axis]:
                if plan is not None:
                    plan.fallbacks.append(f"{name}: {axis}={size} not divisible by {mesh_axis}={mesh.shape[mesh_axis]}")
                mesh_axis = None
        out.append(mesh_axis)
    return PartitionSpec(*out)


def _param_axes(path, var) -> tuple:
    axes = tuple(var.get_metadata().get("axes", ())) if hasattr(var, "get_metadata") else ()
    value = var.value if hasattr(var, "value") else var
    if len(axes) == value.ndim - 1 and "blocks" in [str(p) for p in path]:
        axes = ("layers",) + axes  # stacked blocks carry a leading layer axis
    if len(axes) != value.ndim:
        axes = (None,) * value.ndim
    return axes


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES, plan: Plan | None = None):
    """NamedShardings for an NNX params State, from the `axes` metadata of every Param. A plain dict
    (a drafter's params: e.g. a draft model's State beside lookup tables) gets each State's
    shardings, and its bare arrays are replicated."""
    if isinstance(params, dict):
        return {k: param_shardings(v, mesh, rules, plan) if isinstance(v, (dict, nnx.State)) else replicated(mesh)
                for k, v in params.items()}
    flat = nnx.to_flat_state(params)
    specs = []
    for path, var in flat:
        name = "/".join(str(p) for p in path)
        spec = spec_for(name, _param_axes(path, var), var.value.shape, mesh, rules, plan)
        specs.append((path, var.replace(NamedSharding(mesh, spec))))
    return nnx.from_flat_state(specs)


def logical_axes(tree):
    """The logical axis names of every array in a decode-state pytree, as a pytree of `Axes`.

    Types declare their own: any node with a `logical_axes()` method (the decode state, its
    statistics, KV caches) returns a copy of itself whose array fields are replaced by tuples of
    axis names, and whose other fields (child structures) are left for their own declarations.
    Arrays that no type declares (e.g. inside a custom drafter's state) are replicated."""

    def declared_or_child(x, root):
        return x is not root and (_is_names(x) or hasattr(x, "logical_axes"))

    if hasattr(tree, "logical_axes"):
        declared = tree.logical_axes()
        return jax.tree.map(lambda x: Axes(x) if _is_names(x) else logical_axes(x), declared,
                            is_leaf=lambda x: declared_or_child(x, declared))
    return jax.tree.map(lambda x: logical_axes(x) if hasattr(x, "logical_axes") else Axes((None,) * np.ndim(x)),
                        tree, is_leaf=lambda x: x is not tree and hasattr(x, "logical_axes"))


@dataclasses.dataclass(frozen=True)
class Axes:
    """Logical axis names of one array (a pytree leaf, unlike a tuple)."""

    names: tuple


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES, plan: Plan | None = None):
    """NamedShardings for a decode state (arrays or ShapeDtypeStructs) from its declared logical axes."""
    axes = logical_axes(tree)

    def one(path, leaf, ax):
        name = jax.tree_util.keystr(path)
        shape = tuple(getattr(leaf, "shape", ()))
        if len(ax.names) != len(shape):
            raise ShardingRuleError(f"{name} has shape {shape} but declares logical axes {ax.names}")
        return NamedSharding(mesh, spec_for(name, ax.names, shape, mesh, rules, plan))

    return jax.tree_util.tree_map_with_path(one, tree, axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def place(tree, shardings):
    """Put host or device arrays onto their shardings; works with several processes (each passes
    the same full host value and keeps the shards it owns)."""

    def put(x, sharding):
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def prepare_for_mesh(module, mesh: Mesh):
    """Repeat kv heads up to the `model` axis when the model has fewer (GQA), so they can be sharded."""
    m = mesh.shape["model"]
    if m == 1 or not hasattr(module, "with_kv_heads"):
        return module
    cfg = module.config
    k = cfg.num_kv_heads
    if m > k and m % k == 0 and cfg.num_heads % m == 0 and hasattr(module, "with_kv_heads"):
        return module.with_kv_heads(m)
    return module


def distributed_init(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_devices: int | None = None) -> bool:
    """Start multi-host JAX (`jax.distributed.initialize`). Arguments default to the environment:
    SPECJAX_COORDINATOR (or JAX_COORDINATOR_ADDRESS), SPECJAX_NUM_PROCESSES (or JAX_NUM_PROCESSES),
    SPECJAX_PROCESS_ID (or JAX_PROCESS_ID). Returns False when nothing asks for several processes.
    On CPU, cross-process collectives use gloo."""
    env = os.environ
    coordinator = coordinator or env.get("SPECJAX_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or _int(env.get("SPECJAX_NUM_PROCESSES") or env.get("JAX_NUM_PROCESSES"))
    if process_id is None:
        process_id = _int(env.get("SPECJAX_PROCESS_ID") or env.get("JAX_PROCESS_ID"))
    if not coordinator or not num_processes or num_processes < 2:
        return False
    if process_id is None or not 0 <= process_id < num_processes:
        raise ConfigError(f"process id {process_id} must be in [0, {num_processes})")
    if local_devices:
        jax.config.update("jax_num_cpu_devices", local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True


def _int(x: Any) -> int | None:
    return int(x) if x not in (None, "") else None
