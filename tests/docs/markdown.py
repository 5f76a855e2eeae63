"""Just enough Markdown for the docs tests: GitHub heading anchors, links, fenced blocks."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The front page and every page under docs/: what the docs tests read.
PAGES = (PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
# [text](target) outside code spans; images too. Nested brackets do not occur in our docs.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?: \"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```<language> blocks, in order."""
    blocks, body, inside = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if not inside and stripped == f"```{language}":
            inside, body = True, []
        elif inside and stripped == "```":
            inside = False
            blocks.append("\n".join(body))
        elif inside:
            body.append(line)
    return blocks


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page; repeated headings get -1, -2... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(text: str) -> list[str]:
    """Every link target in the prose (code spans and fenced blocks ignored)."""
    targets = []
    for line in prose_lines(text):
        targets += _LINK.findall(_CODE_SPAN.sub("", line))
    return targets
