"""Papers are cited by authors, year and section, never by the file numbers of the paper copies the
project was specified from; every work the package cites has a full entry in docs/references.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "docs" / "references.md"
TEXT_SUFFIXES = {".py", ".toml", ".md", ".txt", ".cfg", ".ini", ".sh"}

# A paper's file number: "000" ... "004" standing alone -- not part of a number ("0.001", "10,000",
# "60,000 weights"), a name or a path. No ordinary prose in the project writes such a number on its own,
# so every one is taken as a citation: "000 §3", "as in 000, Fig. 4", "002 trains", "(002)", "paper 004".
FILE_NUMBER = re.compile(r"papers/|shared/papers|\b00[0-4]_[0-9a-f]{16}|(?<![\w.,/-])00[0-4](?!\w|,\d|\.\d)")

# "Frankle et al. 2021", "Frankle et al. (2021", "Evci et al.'s (2020)", "Paganini & Forde 2020",
# "Glorot & Bengio (2010)": the key under which docs/references.md lists the work.
CITATION = re.compile(
    r"\b((?:(?:de|van|von) )?[A-Z][\w-]+(?: et al\.| & [A-Z][\w-]+))(?:'s)?,? \(?((?:19|20)\d\d)\b"
)


def _files() -> list[Path]:
    out = []
    for folder in ("prunelab", "bench"):
        out += [p for p in sorted((ROOT / folder).rglob("*"))
                if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    out += sorted((ROOT / "repro").glob("*.py")) + sorted((ROOT / "repro").glob("*.toml"))
    out += [ROOT / "docs" / "guide.md", ROOT / "docs" / "design.md"]
    return [p for p in out if p.exists()]


@pytest.mark.parametrize("text", [
    "Frankle et al. §5 (000_e9bcdbe0f53ebd33.txt)", "000 §3", "(000 App. M)", "as in 000, Fig. 4", "paper 002",
    "Paper 002 §3.1", "Frankle et al. 000", "Lee et al. 004, Fig. 2", "004 Table 1", "001 eq. (1)",
    "Tanaka et al. 2020 = paper 001", "(002)", "every paper in ``papers/``", "the papers in `shared/papers`",
    "002's 20 levels", "(000, App. J)",
    "8 levels; 002 trains 30 epochs per level", "sparsities follow 000: ResNet-20", "is what 001",
])
def test_detector_flags_file_numbers(text):
    assert FILE_NUMBER.search(text), text


@pytest.mark.parametrize("text", [
    "time.sleep(0.001)", "10,000 pruning iterations", "never 60,000 weights", "rounded to 0.000",
    "Frankle et al. 2021, §5", "seed 0, 1, 2", "Paganini & Forde 2020, App. B", "x = 100000000",
    "0.003 sparsity", "runs/0001", "step_001.pt", "1e-003",
])
def test_detector_ignores_ordinary_numbers(text):
    assert not FILE_NUMBER.search(text), text


def test_no_citation_by_file_number():
    hits = []
    for path in _files():
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if FILE_NUMBER.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "cite papers by authors, year and section (docs/references.md), not by file number:\n" + \
        "\n".join(hits)


def test_every_cited_work_is_in_the_references():
    listed = REFERENCES.read_text(encoding="utf-8")
    missing = {}
    for path in sorted((ROOT / "prunelab").rglob("*.py")):
        text = " ".join(path.read_text(encoding="utf-8").split())  # citations broken over lines
        for authors, year in CITATION.findall(text):
            key = f"{authors} {year}"
            if f"**{key}**" not in listed:
                missing.setdefault(key, str(path.relative_to(ROOT)))
    assert not missing, f"cited in prunelab/ but not listed in docs/references.md: {missing}"


def test_references_cite_the_five_papers_with_their_arxiv_ids():
    listed = REFERENCES.read_text(encoding="utf-8")
    for key, arxiv in [("Frankle et al. 2021", "2009.08576"), ("Tanaka et al. 2020", "2006.05467"),
                       ("Lee et al. 2019", "1810.02340"), ("Paganini & Forde 2020", "2001.05050"),
                       ("Wang et al. 2020", "2002.07376")]:
        entry = next((e for e in listed.split("\n- ") if e.startswith(f"**{key}**")), None)
        assert entry is not None, key
        assert f"arXiv:{arxiv}" in entry, key
