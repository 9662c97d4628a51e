"""docs/benchmarks.md: each benchmark owns one ``## `` section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(heading: str, markdown: str, docs: Path = DOCS) -> None:
    """Replace the section that starts with ``heading`` (or append it), leaving the rest as is."""
    if not markdown.startswith(heading):
        raise ValueError(f"a section must start with its heading {heading!r}")
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + markdown
    else:
        following = text.find("\n## ", start + len(heading))
        rest = "" if following == -1 else "\n" + text[following + 1 :]
        text = text[:start] + markdown.rstrip("\n") + "\n" + rest
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)
