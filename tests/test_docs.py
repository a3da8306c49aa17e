"""The documentation: a short README, relative links that resolve, the blocks CI runs.

Links are checked as GitHub renders them: ``[text](path)`` relative to the file, ``#anchor`` against
the headings of the target file slugged the way GitHub slugs them. External links are not fetched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    ROOT / "ablations" / "README.md",
]
MAX_README_LINES = 300
CI_MARKERS = ("<!-- ci: install-and-run -->", "<!-- ci: test -->")

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed (links there are not links)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lowercase, punctuation but ``-``/``_`` removed, spaces → ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of ``path`` (repeats get ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    result = set()
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        match = None if inside else HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    """The relative link targets of ``path``, each once, in order of appearance."""
    targets: list[str] = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http(s), mailto, ...
                continue
            if target not in targets:
                targets.append(target)
    return targets


def link_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (as written in ``source``) does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    if not resolved.exists():
        return f"{rel(resolved)} does not exist"
    if anchor:
        if resolved.is_dir() or resolved.suffix.lower() != ".md":
            return f"an anchor into {rel(resolved)}, which is not a Markdown file"
        if anchor not in anchors(resolved):
            return f"no heading of {rel(resolved)} has the anchor #{anchor}"
    return None


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def test_slug_rule():
    assert github_slug("Cross-validated: `compare --cv 5`") == "cross-validated-compare---cv-5"
    assert github_slug("Real data: PTB-XL subset and PneumoniaMNIST") == "real-data-ptb-xl-subset-and-pneumoniamnist"
    assert github_slug("### `unfreeze_point`".lstrip("# ")) == "unfreeze_point"
    assert github_slug("Predict, serve & explain (v2)") == "predict-serve--explain-v2"


def test_link_check_catches_a_broken_link(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Top\n## Two words\n[ok](b.md#x) [bad](c.md) [anchor](#two-words) [no](#nope)\n")
    (tmp_path / "b.md").write_text("```\n# not a heading\n```\n# X\n")
    problems = {t: link_problem(tmp_path / "a.md", t) for t in relative_links(tmp_path / "a.md")}
    assert problems["b.md#x"] is None and problems["#two-words"] is None
    assert "does not exist" in problems["c.md"] and "#nope" in problems["#nope"]
    assert "#not-a-heading" not in anchors(tmp_path / "b.md")


def test_the_docs_exist():
    missing = [rel(path) for path in DOCS if not path.exists()]
    assert not missing, f"documentation files missing: {missing}"


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move reference material to docs/"
    )


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param(path, target, id=f"{rel(path)}->{target}")
        for path in DOCS
        if path.exists()
        for target in relative_links(path)
    ],
)
def test_relative_link_resolves(source: Path, target: str):
    problem = link_problem(source, target)
    assert problem is None, f"{rel(source)}: link ({target}): {problem}"


@pytest.mark.parametrize("marker", CI_MARKERS)
def test_ci_marker_is_followed_by_a_bash_block(marker: str):
    """``.ci/run`` runs the first fenced block after each marker: it must be there, in bash, not empty."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = [i for i, line in enumerate(lines) if line.strip() == marker]
    assert len(at) == 1, f"README.md: expected the marker {marker} once, found it {len(at)} times"
    after = lines[at[0] + 1 :]
    assert after and after[0].strip() == "```bash", (
        f"README.md: the line after {marker} must open a ```bash block, got {after[0] if after else 'end of file'!r}"
    )
    closing = next((i for i, line in enumerate(after[1:], 1) if line.strip().startswith("```")), None)
    assert closing is not None, f"README.md: the ```bash block after {marker} is never closed"
    assert any(line.strip() for line in after[1:closing]), f"README.md: the ```bash block after {marker} is empty"
