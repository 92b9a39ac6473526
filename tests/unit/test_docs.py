"""The documentation: the site MkDocs builds from docs/ (mkdocs.yml) builds strictly, and
the README, the page a newcomer reads first, stays short and its links lead somewhere.

The pages' examples are checked elsewhere: parsed and the CLI named in test_readme.py,
type-checked in test_types.py, and run where a test needs them (test_client.py,
tests/e2e/test_search.py). PAGES and python_blocks() here are what those tests read."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness import ROOT

DOCS = ROOT / "docs"

# Every page a reader may open, README first: {"README.md": text, "docs/api.md": text, ...}.
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
}

# A ```python block, and the `<!-- mypy: skip ... -->` line that may stand just before it.
_BLOCK = re.compile(r"^(<!-- mypy: skip\b[^\n]*-->\n)?```python\n(.*?)^```", re.S | re.M)

# How long a newcomer's page may grow: about five minutes' reading (the tables count too).
README_WORDS = 1300


def python_blocks(text: str, *, skipped: bool = True) -> list[str]:
    """A page's ```python blocks, in order; without those marked `<!-- mypy: skip -->`
    when `skipped` is False."""
    return [code for _, code in python_blocks_at(text, skipped=skipped)]


def python_blocks_at(text: str, *, skipped: bool = True) -> list[tuple[int, str]]:
    """python_blocks(), each with the page's line number of its code's first line."""
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in _BLOCK.finditer(text)
        if skipped or not m.group(1)
    ]


def page_section(page: str, heading: str) -> str:
    """The text under `heading` (a whole line, like "## Finding tasks") up to the next
    heading of its level or above; a `# comment` in a code block is no heading."""
    level = heading.index(" ")
    found, fenced, lines = False, False, []
    for line in PAGES[page].splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        here = None if fenced else re.match(r"(#{1,6}) ", line)
        if found and here and len(here.group(1)) <= level:
            break
        if found:
            lines.append(line)
        elif here and line.rstrip("\n") == heading:
            found = True
    assert found, f"{page} has no heading {heading!r}"
    return "".join(lines)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as
    hyphens (`## The worker's journal` -> `the-workers-journal`)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # a `# comment` in a block is no heading
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.timeout(120)
def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, a
    nav entry without its page, or a README region the home page takes that is gone,
    fails. It takes about a second."""
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,  # the snippets' base path: the README's regions are read from here
        capture_output=True,
        text=True,
        timeout=110,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, "mkdocs build --strict fails:\n" + log
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "index.html").exists(), log


def test_the_site_shows_the_readmes_own_parts_from_the_readme():
    """What the README must say itself (its intro, its quickstart, its side-by-side
    table) the site takes from it, marked regions included by pymdownx.snippets, so that
    each is written once. A region missing from the README fails the build."""
    taken = {
        "docs/index.md": ["intro", "quickstart"],
        "docs/performance.md": ["side-by-side"],
    }
    for page, regions in taken.items():
        for region in regions:
            assert f'--8<-- "README.md:{region}"' in PAGES[page]
            assert f"<!-- --8<-- [start:{region}] -->" in PAGES["README.md"]


def test_the_readme_is_read_in_five_minutes():
    words = len(PAGES["README.md"].split())
    assert words <= README_WORDS, (
        f"README.md has {words} words, more than {README_WORDS} (about five minutes' reading): "
        "move the details to a page under docs/ and link it"
    )


def test_the_readmes_links_lead_somewhere():
    """Relative links (`docs/events.md`, `docs/failures.md#the-workers-journal`, `#documentation`)
    point at files that exist and at headings that are there, as GitHub shows them."""
    readme = PAGES["README.md"]
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), f"README.md links to {link}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text()), f"README.md links to {link}: no such heading"


def test_the_readmes_performance_section_leads_with_the_side_by_side_table():
    """Issue 25: the first thing under Performance is martinet beside its peers."""
    section = page_section("README.md", "## Performance")
    first_table = re.search(r"^\|.*$", section, re.M)
    assert first_table and "PgQueuer" in first_table.group(0) and "Huey" in first_table.group(0), section
    lead = section[: first_table.start()]
    assert len(lead.split()) <= 20 and "```" not in lead, "the table must come first, not:\n" + lead
    assert "## Our own scenarios" in PAGES["docs/performance.md"]
