"""Offline text corpora shipped with the running interpreter, with fixed splits.

- ``code``: Python source files of the standard library (``sysconfig.get_paths()["stdlib"]``),
  sorted by relative path, leaving out ``site-packages`` and test suites, read in order
  until ``max_bytes`` (a deterministic subset).
- ``prose``: English text: every help topic of ``pydoc_data.topics.topics`` (sorted by
  name) and the docstrings (module, class, function) of the same stdlib files, taken from
  their syntax trees (nothing is imported).

Split: a file (or help topic) belongs to ``eval`` when the first byte of the SHA-256 of
its name is < 26 (≈ 10%), else to ``train``; so the split of a file never depends on which
other files exist. Both corpora are deterministic for a given Python installation.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
import warnings
from pathlib import Path
from typing import Literal

Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def split_of(name: str) -> Split:
    """The fixed split of a document named ``name``: ``eval`` for ≈ 10% of names."""
    return "eval" if hashlib.sha256(name.encode()).digest()[0] < 26 else "train"


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    """Standard-library ``.py`` files, sorted by path relative to the stdlib root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in root.rglob("*.py")
        if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    return tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _rel(path: Path) -> str:
    return path.relative_to(sysconfig.get_paths()["stdlib"]).as_posix()


@functools.cache
def code_documents(split: Split, max_bytes: int = 4_000_000) -> tuple[str, ...]:
    """Source texts of the split's stdlib files, in order, until about ``max_bytes`` (the
    budget is split 90/10 between train and eval, so eval stays held-out)."""
    split = check_split(split)
    budget = int(max_bytes * (0.9 if split == "train" else 0.1))
    docs, used = [], 0
    for path in stdlib_files():
        if used >= budget:
            break
        if split_of(_rel(path)) != split:
            continue
        text = _read(path)
        docs.append(text)
        used += len(text.encode())
    return tuple(docs)


def _docstrings(source: str) -> list[str]:
    with warnings.catch_warnings():  # invalid escapes in old sources are not our concern
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return []
    nodes = [tree] + [
        n for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 40:  # skip one-liners such as "Return x."
            out.append(doc)
    return out


@functools.cache
def prose_documents(split: Split, max_bytes: int = 2_000_000) -> tuple[str, ...]:
    """pydoc help topics, then stdlib docstrings (one document per file), until about
    ``max_bytes`` (split 90/10 as in ``code_documents``)."""
    from pydoc_data.topics import topics

    split = check_split(split)
    budget = int(max_bytes * (0.9 if split == "train" else 0.1))
    docs, used = [], 0
    named = [(f"topic:{k}", topics[k]) for k in sorted(topics)]
    named += [(f"doc:{_rel(p)}", p) for p in stdlib_files()]
    for name, item in named:
        if used >= budget:
            break
        if split_of(name) != split:
            continue
        text = item if isinstance(item, str) else "\n\n".join(_docstrings(_read(item)))
        if text:
            docs.append(text)
            used += len(text.encode())
    return tuple(docs)
