"""The README and docs/ link only to what exists: files, and headings within them; every page
of docs/ is reachable from the README. (No server: Markdown files only.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The page without its code blocks (a `[x](y)` in code is not a link)."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def slugs(path: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as -."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), flags=re.M):
        text = re.sub(r"[`*_]", "", heading.strip().lower())
        found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def local_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in LINK.findall(prose(page))
            if not re.match(r"[a-z]+:", target)]


def test_every_local_link_resolves_to_a_file_and_heading():
    broken = []
    for page, target in local_links():
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve()
              for page, target in local_links() if page.name == "README.md"}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md)\n")
    assert slugs(page) == {"title"}
    assert LINK.findall(prose(page)) == ["#title", "#nope", "missing.md"]
