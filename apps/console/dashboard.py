"""What one dashboard shows: a search, filters, a sort and a page of the live sessions.

A `View` is read from the page's query string (`?q=jane&state=queued&sort=-requests&page=2`),
so a view is a link: it works without JavaScript (the filter form is a GET form, the column
headings are links) and the page's script sends the same parameters over its socket to get
the same view live. Only non-default parameters are written back into links.

The feed reads every live session once per tick for all viewers of a process; each view's
page (one for all the operators on it) is cut from that one read here, in memory (a thousand
summaries filter and sort in a few milliseconds), and sent only when it changed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlencode

PAGE_SIZE = 50
MAX_QUERY_CHARS = 200

STATES = ("idle", "responding", "queued")
KINDS = ("relay", "webrtc", "sip")
ORIGINS = ("caller", "console", "api", "server")


def _text(value: Any) -> str:
    return str(value or "").casefold()


# The same labels and ids are sorted tick after tick: each is split once.
@functools.lru_cache(maxsize=20_000)
def _natural(value: Any) -> tuple:
    """Text that sorts as people read it: "Customer 9" before "Customer 10"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", _text(value)))


# Column key → (heading, sort key). Every column sorts; ties keep the newest first.
COLUMNS: dict[str, tuple[str, Callable[[dict], Any]]] = {
    "session": ("Session", lambda s: _natural(s["id"])),
    "label": ("Label", lambda s: (not s.get("label"), _natural(s.get("label")))),
    "state": ("State", lambda s: (s["state"], s["queued"])),
    "model": ("Model", lambda s: _text(s["model"])),
    "kind": ("Kind", lambda s: s["kind"]),
    "started": ("Age", lambda s: s["started_at"]),
    "connected_by": ("Connected by", lambda s: _text(s["connected_by"])),
    "requests": ("Responses", lambda s: s["requests"]),
    "cost": ("Cost", lambda s: s.get("cost_usd") or 0.0),
    "last_activity": ("Last activity", lambda s: s["last_activity"]),
    "watching": ("Watching", lambda s: len(s["watchers"])),
}
DEFAULT_SORT = "-started"  # newest first


@dataclass(frozen=True, kw_only=True)
class View:
    q: str = ""
    state: str = ""
    model: str = ""
    kind: str = ""
    origin: str = ""
    sort: str = DEFAULT_SORT
    page: int = 1

    @classmethod
    def from_query(cls, data: Mapping[str, Any]) -> View:
        """A view from a query string (a QueryDict) or the socket's JSON; a value that is not
        one of the choices is ignored, as a hand-edited link deserves."""

        def one(name: str) -> str:
            value = data.get(name, "")
            return value.strip()[:MAX_QUERY_CHARS] if isinstance(value, str) else ""

        sort = one("sort")
        if sort.removeprefix("-") not in COLUMNS:
            sort = DEFAULT_SORT
        # The page asks for a page as text (its URL's) or, after the server moved it to the
        # last page there is, as the number the server sent.
        page = data.get("page")
        if not (isinstance(page, int) and not isinstance(page, bool)):
            try:
                page = int(one("page") or 1)
            except ValueError:
                page = 1
        page = max(1, page)
        return cls(
            q=one("q"),
            state=one("state") if one("state") in STATES else "",
            model=one("model"),
            kind=one("kind") if one("kind") in KINDS else "",
            origin=one("origin") if one("origin") in ORIGINS else "",
            sort=sort,
            page=page,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters that differ from the defaults (with `changes` made)."""
        view = replace(self, **changes)
        default = View()
        return {
            f.name: str(getattr(view, f.name))
            for f in fields(View)
            if getattr(view, f.name) != getattr(default, f.name)
        }

    def link(self, **changes: Any) -> str:
        params = self.params(**changes)
        return f"?{urlencode(params)}" if params else "?"

    @property
    def sort_key(self) -> str:
        return self.sort.removeprefix("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    def sorted_by(self, key: str) -> str:
        """The sort a click on column `key` asks for: that column, or the other way round."""
        if key == self.sort_key:
            return key if self.descending else f"-{key}"
        return f"-{key}" if key in ("started", "requests", "cost", "last_activity", "watching") else key


    def matches(self, session: dict) -> bool:
        if self.q:
            needle = self.q.casefold()
            # The search the admin's session list has: a phone call by its number or call id too.
            haystack = (
                session["id"],
                session.get("label"),
                session.get("connected_by"),
                session.get("call_id"),
                session.get("caller_number"),
            )
            if not any(needle in _text(value) for value in haystack):
                return False
        if self.state == "queued":
            if not session["queued"]:
                return False
        elif self.state and session["state"] != self.state:
            return False
        if self.model and session["model"] != self.model:
            return False
        if self.kind and session["kind"] != self.kind:
            return False
        return not self.origin or session["origin_counts"].get(self.origin, 0) > 0

    def page_of(
        self, sessions: Iterable[dict], figures: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """This view's page of `sessions` (newest first as given), with what the page shows
        around the rows: how many match, which page of how many, the filters' choices.
        `figures` are `fleet(sessions)`, when the caller cuts several pages from one read."""
        everything = list(sessions)
        figures = figures or fleet(everything)
        chosen = [s for s in everything if self.matches(s)]
        # Stable sorts: newest first within equal keys, whichever way the column goes.
        chosen.sort(key=lambda s: s["started_at"], reverse=True)
        key = COLUMNS[self.sort_key][1]
        chosen.sort(key=key, reverse=self.descending)
        pages = max(1, -(-len(chosen) // PAGE_SIZE))
        page = min(self.page, pages)
        start = (page - 1) * PAGE_SIZE
        models = figures["models"]
        if self.model and self.model not in models:
            models = sorted([*models, self.model])
        return {
            "rows": chosen[start : start + PAGE_SIZE],
            "total": len(chosen),
            "live": figures["live"],
            "page": page,
            "pages": pages,
            "first": start + 1 if chosen else 0,
            "last": min(start + PAGE_SIZE, len(chosen)),
            "models": models,
            "cost_usd": figures["cost_usd"],
        }


def fleet(sessions: list[dict]) -> dict[str, Any]:
    """What every view's page shows of all the live sessions alike: how many, which models,
    what they have cost."""
    return {
        "live": len(sessions),
        "models": sorted({s["model"] for s in sessions}),
        "cost_usd": fleet_cost(sessions),
    }


def fleet_cost(sessions: Iterable[dict]) -> float | None:
    """What the live sessions have cost so far, when their models are priced (None if none is)."""
    costs = [s["cost_usd"] for s in sessions if s.get("cost_usd") is not None]
    return round(sum(costs), 6) if costs else None


def headings(view: View) -> list[dict[str, str]]:
    """The table's column headings: each a link to sort by it, and its `aria-sort`."""
    out = []
    for key, (title, _) in COLUMNS.items():
        current = key == view.sort_key
        # Newest first is the smallest age first: "Age" reads the start time the other way.
        descending = view.descending != (key == "started")
        out.append(
            {
                "key": key,
                "title": title,
                "href": view.link(sort=view.sorted_by(key), page=1),
                "aria_sort": ("descending" if descending else "ascending") if current else "none",
            }
        )
    return out


def sort_choices() -> list[tuple[str, str]]:
    """Every sort as a choice, for the phone's sort menu (the headings are hidden there): each
    column both ways; the age as newest or oldest first."""
    out = []
    for key, (title, _) in COLUMNS.items():
        for sort in (key, f"-{key}"):
            if key == "started":
                out.append((sort, "Newest first" if sort.startswith("-") else "Oldest first"))
            else:
                out.append((sort, f"{title}, {'descending' if sort.startswith('-') else 'ascending'}"))
    return out
