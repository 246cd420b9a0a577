"""The repository stands alone: its code and docs cite only files inside it.

A clone has no sibling folders, so no file may point outside the repository (to
``../shared`` or to the notes the project was specified from); references to the docs
(``docs/fastpath.md §1``) must name a doc and a section that exist, and relative links
in the markdown must resolve.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".txt", ".yaml", ".yml", ".cpp", ".sh", ".json"}
TEXT_NAMES = {"Makefile", "run"}  # .ci/run
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache",
             "runs", "rllc-store"}

#: Pointers outside the repository: the sibling folder and the names of its notes.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.-])shared/|\bFASTPATH\b|\b(?:CLI|PAPER|STYLE)\.md\b")
#: ``docs/fastpath.md §1``, ``[`docs/cli.md`](docs/cli.md) §2``, ``[fastpath.md](fastpath.md) §8``
SECTION_REF = re.compile(r"([\w-]+)\.md`?(?:\]\([^)\s]*\))?\s*§\s*(\d+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (every file when git is absent)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], capture_output=True, check=True, text=True).stdout
        paths = [ROOT / p for p in listed.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            paths += [Path(folder) / f for f in files]
    return sorted(p for p in paths if p.is_file()
                  and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)
                  and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts))


def test_no_file_points_outside_the_repository():
    here = Path(__file__).resolve()
    hits = []
    for path in repository_files():
        if path.resolve() == here:  # this file spells the patterns out
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "cite docs/… instead:\n" + "\n".join(hits)


def sections(doc: Path) -> set[int]:
    """Numbers of a doc's ``## N. Title`` headings."""
    return {int(m[1]) for m in re.finditer(r"^## (\d+)\. ", doc.read_text(), re.M)}


def test_doc_section_references_resolve():
    docs = {p.stem: p for p in (ROOT / "docs").glob("*.md")}
    bad = []
    for path in repository_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in SECTION_REF.finditer(line):
                name, number = m[1], int(m[2])
                if name not in docs or number not in sections(docs[name]):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m[0]}")
    assert not bad, "no such doc or section:\n" + "\n".join(bad)


def test_markdown_links_resolve():
    bad = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in LINK.finditer(path.read_text()):
            target = m[1].split("#")[0]
            if target and "://" not in target and not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)}: {m[1]}")
    assert not bad, "broken links:\n" + "\n".join(bad)
