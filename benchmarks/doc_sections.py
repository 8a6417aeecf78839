"""Replace one benchmark's section of a Markdown file, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` markers, leaving the rest of the file as it is."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:  # first run: append the section
        doc = (doc.rstrip("\n") + "\n\n" if doc.strip() else "") + block + "\n"
    path.write_text(doc)
