"""Every relative link of README.md and docs/*.md points at a file that exists,
and an anchor at a heading of that file."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from tests.docs.markdown import PAGES, PROJECT_ROOT, anchors, links

# Written in parallel by other issues (14: security, 16: models) and linked
# from here already: until they are merged, a link to them may name a file
# that does not exist yet. Only these two, by name; their anchors are checked
# as soon as the file exists.
PAGES_OF_OTHER_ISSUES = {PROJECT_ROOT / "docs" / "security.md", PROJECT_ROOT / "docs" / "models.md"}


def _relative(target: str) -> bool:
    return not target.startswith(("http://", "https://", "mailto:"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_resolves(page) -> None:
    broken = []
    for target in filter(_relative, links(page.read_text())):
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists():
            if file not in PAGES_OF_OTHER_ISSUES:
                broken.append(f"{target}: no such file")
            continue
        if anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with this anchor in {file.relative_to(PROJECT_ROOT)}")
    assert broken == []


def test_the_front_page_links_every_docs_page() -> None:
    readme = PAGES[0].read_text()
    linked = {(PROJECT_ROOT / unquote(t.partition("#")[0])).resolve() for t in links(readme)}
    assert [p.name for p in PAGES[1:] if p not in linked] == []
    assert PAGES_OF_OTHER_ISSUES <= linked


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path) -> None:
    (tmp_path / "a.md").write_text("# A page\n\n## Section `two`\n\n[x](b.md) [y](#section-two) [z](#nope)\n"
                                   "```\n[not a link](c.md)\n```\n")
    text = (tmp_path / "a.md").read_text()
    assert links(text) == ["b.md", "#section-two", "#nope"]
    assert anchors(text) == {"a-page", "section-two"}
