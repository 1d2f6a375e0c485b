"""The session settings that decide how the server splits a text into tokens.

The gateway parses every text as UTF-8 with ``standard_conforming_strings = on``. Were the
server to read the same bytes otherwise, one harmless statement for the gateway could be two
for the server: with ``standard_conforming_strings = off`` a backslash escapes the quote of
``'a\\'``, and in a client encoding such as SJIS a quote or backslash can be the second
byte of a multibyte character (CVE-2006-2314). So:

* the login pins both (:mod:`.startup` sends ``client_encoding`` and
  ``standard_conforming_strings=on`` in every startup packet, which wins over database and
  role defaults; :mod:`.session` checks the server's ParameterStatus);
* during the session, ``SET`` / ``SET LOCAL`` / ``set_config`` of either to a value outside
  the safe ones is refused outright (:mod:`.classify`: ``Unplaceable("lexing_setting")``,
  which no policy rule can allow, however broad its grant on ``setting:*``). ``RESET``,
  ``SET ... TO DEFAULT``, ``RESET ALL`` and ``DISCARD ALL`` go back to the login's pinned
  value, so they stay allowed. A function's own ``SET`` clause lasts only while it runs;
  ``ALTER ROLE / DATABASE ... SET`` is overridden by the pinned startup values;
* server code the policy admits (a DO block, a user function calling ``set_config``) may
  still change them: the flow ends the session on such a ``ParameterStatus``
  (:mod:`.flow_answers`).

Pure (no I/O, no parser), so the startup phase and the classifier share it.
"""

from __future__ import annotations

__all__ = [
    "LEXING_SETTINGS",
    "SAFE_ENCODINGS",
    "encoding_name",
    "safe_encoding",
    "safe_lexing_value",
]

#: client_encoding values whose bytes the gateway parses as the server does.
#: Compared as the server does, on letters and digits alone ("'utf-8'" is UTF8).
SAFE_ENCODINGS = frozenset({"utf8", "unicode", "sqlascii"})
#: Settings whose value changes how the server lexes a text.
LEXING_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})
# The spellings of "on" the server's boolean input takes (lower case; no prefixes: refusing
# an unusual spelling is safe, taking "o" for on would not be).
_ON = frozenset({"on", "true", "yes", "1"})


def encoding_name(value: str) -> str:
    """An encoding name as the server compares it: lower-case letters and digits alone."""
    return "".join(ch for ch in value.lower() if ch.isascii() and ch.isalnum())


def safe_encoding(value: str) -> bool:
    """Whether the server lexes bytes in this client_encoding as the gateway parses them."""
    return encoding_name(value) in SAFE_ENCODINGS


def safe_lexing_value(name: str, value: str) -> bool:
    """Whether setting ``name`` (lower case) to ``value`` keeps the server lexing as the
    gateway does; settings other than :data:`LEXING_SETTINGS` always do."""
    if name == "client_encoding":
        return safe_encoding(value)
    if name == "standard_conforming_strings":
        return value.strip().lower() in _ON
    return True
