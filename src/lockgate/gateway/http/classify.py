"""Request → (action, object): the per-resource route table, else the method's default.

Routes are tried in order; the first whose method (``*`` = any) and path glob match the
*normalised* object path decides. A glob's ``*`` spans slashes (``/admin/*`` covers every
depth below ``/admin``), which is the safe reading for deny rules. Without a matching route:
``GET``/``HEAD`` are ``read``, every other method (including unknown or lowercase ones) is
``write``, so an odd method can only be judged as the more privileged action.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

READ_METHODS = frozenset({"GET", "HEAD"})


class Classifier:
    __slots__ = ("_routes",)

    def __init__(self, routes: Iterable[Any] = ()) -> None:
        self._routes: list[tuple[str | None, re.Pattern[str], str, str | None]] = [
            (
                None if r.method == "*" else r.method.upper(),
                re.compile(fnmatch.translate(r.path)),
                r.action,
                r.object,
            )
            for r in routes
        ]

    def classify(self, method: str, path: str) -> tuple[str, str]:
        for want, pattern, action, obj in self._routes:
            if (want is None or want == method) and pattern.match(path):
                return action, obj if obj is not None else path
        return ("read" if method in READ_METHODS else "write"), path
