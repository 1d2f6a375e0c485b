"""Request-target normalisation: policy judges exactly the path the upstream receives.

Rules (any refusal is a 400 with a reason slug, audited; the normalised path is what is
forwarded upstream):

* origin-form only (``/...``); absolute-form, authority-form, ``*`` and fragments are refused;
* only RFC 3986 path characters; a literal backslash or ``;`` is refused (Windows/IIS treat
  ``\\`` as ``/``; servlet containers strip ``;params`` from segments: both bypass globs);
* percent-encoded *unreserved* characters are decoded (``%61dmin`` is ``admin``, ``%2e`` is
  ``.``; RFC 3986 §6.2.2.2 says they are equivalent), other escapes are kept with uppercase
  hex; ``%2F`` and ``%5C`` (encoded slash, backslash) are refused because upstreams disagree
  about whether they separate segments; ``%00`` and double-encoded dot/slash/backslash
  (``%252e``...) are refused because some upstreams decode twice; escaped bytes that do not
  decode as strict UTF-8 (overlong ``%C0%AE``, surrogates, stray continuation bytes) are
  refused because lenient decoders turn overlong forms into dots and slashes;
* empty segments are collapsed (``//a`` is ``/a``), ``.`` and ``..`` are resolved, and a
  ``..`` climbing above the resource root is refused;
* the first segment names the resource; the rest (``/`` when empty) is the object path. A
  trailing slash is kept.
* the query is forwarded byte-for-byte (it never reaches policy).

Segments keep their case: a case-insensitive upstream must be matched by case-insensitive
rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lockgate.errors import RemoteProtocolError

_PATH_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@%/]*")
_QUERY_OK = re.compile(r"[\x21-\x22\x24-\x7e]*")  # visible ASCII except '#'
_PCT = re.compile(r"%(..)?")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789ABCDEFabcdef")
_REFUSED = {
    "2F": ("encoded slash", "encoded_separator"),
    "5C": ("encoded backslash", "encoded_separator"),
    "00": ("encoded NUL", "encoded_nul"),
}
_RESOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class PathError(RemoteProtocolError):
    """The request target is ambiguous or unsafe; answer 400.

    ``slug`` is the reason recorded in the audit trail and metrics; the message names the
    rule, never the target's bytes.
    """

    def __init__(self, reason: str, slug: str = "bad_path") -> None:
        self.slug = slug
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Target:
    resource: str
    path: str  # normalised, without the resource prefix; always starts with "/"
    query: str  # without "?", raw; "" when absent


def _decode(path: str) -> str:
    high = False  # an escape of a byte >= 0x80: the decoded path must be valid UTF-8

    def repl(m: re.Match[str]) -> str:
        nonlocal high
        pair = m.group(1)
        if pair is None or pair[0] not in _HEX or pair[1] not in _HEX:
            raise PathError("malformed percent-encoding", "bad_percent_encoding")
        up = pair.upper()
        why = _REFUSED.get(up)
        if why:
            raise PathError(*why)
        ch = chr(int(up, 16))
        if ch in _UNRESERVED:
            return ch
        if up == "25":
            nxt = path[m.end() : m.end() + 2].upper()
            if nxt in ("2E", "2F", "5C"):
                raise PathError("double-encoded dot or slash", "double_encoding")
        high = high or up[0] in "89ABCDEF"
        return "%" + up

    out = _PCT.sub(repl, path)
    if high:
        check_utf8(out)
    return out


def check_utf8(path: str) -> None:
    """Refuse a path whose percent-decoded bytes are not strict UTF-8.

    Overlong forms (``%C0%AE`` for ``.``, ``%C0%AF`` for ``/``), surrogates, code points
    past U+10FFFF, truncated and stray continuation bytes: a lenient decoder upstream (old
    IIS, some servlet containers) turns the overlong ones into dots and slashes that policy
    never saw. Python's UTF-8 codec is strict about all of them (RFC 3629).
    """
    # ``path`` holds ASCII and valid %XX escapes only (checked by the caller).
    data = _PCT.sub(lambda m: chr(int(m.group(1), 16)), path).encode("latin-1")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("invalid UTF-8 in percent-encoded path", "invalid_utf8") from None


def remove_dots(segments: list[str], trailing: bool) -> str:
    """Resolve ``.``/``..`` and drop empty segments; refuse climbing above the root."""
    out: list[str] = []
    for seg in segments:
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if not out:
                raise PathError("path escapes the resource root", "path_traversal")
            out.pop()
            continue
        out.append(seg)
    if not out:
        return "/"
    last = segments[-1] if segments else ""
    tail = "/" if trailing or last in (".", "..") else ""
    return "/" + "/".join(out) + tail


_CACHE_ENTRIES = 1024
_cache: dict[bytes, Target] = {}


def split_target(raw: bytes) -> Target:
    """Normalise a raw request target into (resource, object path, query).

    Memoised by the raw bytes (a pure function; refusals raise and are not cached).
    """
    target = _cache.get(raw)
    if target is None:
        target = _split_target(raw)
        if len(raw) <= 2048:
            if len(_cache) >= _CACHE_ENTRIES:
                _cache.clear()
            _cache[raw] = target
    return target


def _split_target(raw: bytes) -> Target:
    try:
        target = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PathError("non-ASCII request target", "invalid_character") from None
    if not target.startswith("/"):
        raise PathError("only origin-form request targets are accepted", "bad_target_form")
    path, sep, query = target.partition("?")
    if sep and _QUERY_OK.fullmatch(query) is None:
        raise PathError("invalid character in query", "invalid_character")
    if _PATH_OK.fullmatch(path) is None:
        raise PathError("invalid character in path", "invalid_character")
    if "%" in path:
        path = _decode(path)
    # Fast path: nothing to resolve.
    simple = "//" not in path and "/." not in path
    segments = path.split("/")
    # segments[0] is "" (leading slash); skip empty segments before the resource name.
    i = 1
    while i < len(segments) and segments[i] == "":
        i += 1
    if i >= len(segments):
        raise PathError("no resource in path", "bad_path")
    resource = segments[i]
    if _RESOURCE_RE.fullmatch(resource) is None or resource in (".", ".."):
        raise PathError("invalid resource name", "bad_path")
    rest = segments[i + 1 :]
    if simple:
        obj = "/" + "/".join(rest) if rest else "/"
    else:
        obj = remove_dots(rest, trailing=path.endswith("/"))
    return Target(resource, obj, query)


def split_mounted(raw: bytes, resource: str) -> Target:
    """A request on a resource's own listener: the whole path is the object path."""
    if not raw.startswith(b"/"):
        raise PathError("only origin-form request targets are accepted", "bad_target_form")
    target = split_target(b"/" + resource.encode("ascii") + raw)
    if target.resource != resource:
        raise PathError("invalid request target", "bad_path")
    return target
