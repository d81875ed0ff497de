"""What a screen reader makes of a server-rendered page, read without a browser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

VOID = {"input", "br", "img", "meta", "link", "hr", "source", "wbr", "col", "area", "base", "track"}


class _Texts(HTMLParser):
    """The text of every element with an id (its descendants' included), and the
    `aria-labelledby` of every element, by tag, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str | None]] = []
        self.texts: dict[str, str] = {}
        self.labelledby: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs) -> None:
        named = dict(attrs)
        if "aria-labelledby" in named:
            self.labelledby.append((tag, named["aria-labelledby"]))
        if tag in VOID:
            return
        self.open.append((tag, named.get("id")))
        if named.get("id"):
            self.texts[named["id"]] = ""

    def handle_endtag(self, tag) -> None:
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data) -> None:
        for _, element_id in self.open:
            if element_id:
                self.texts[element_id] += data


def labelled_names(page: str, tag: str) -> list[str]:
    """The accessible names of the `tag`s named by `aria-labelledby`: the text of each element
    the attribute lists, in its order, white space collapsed."""
    parsed = _Texts()
    parsed.feed(page)
    return [
        " ".join(re.sub(r"\s+", " ", parsed.texts[part]).strip() for part in ids.split())
        for found, ids in parsed.labelledby
        if found == tag
    ]
