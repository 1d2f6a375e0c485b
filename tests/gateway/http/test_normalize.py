"""Path normalisation table, and that policy sees exactly the normalised path."""

from __future__ import annotations

import pytest

from lockgate.gateway.http.normalize import PathError, split_target

from .conftest import TOKEN, raw_request

OK = [
    (b"/orders/a/b", "orders", "/a/b", ""),
    (b"/orders", "orders", "/", ""),
    (b"/orders/", "orders", "/", ""),
    (b"/orders/a/", "orders", "/a/", ""),
    (b"/orders/a/../b", "orders", "/b", ""),
    (b"/orders/a/%2e%2e/b", "orders", "/b", ""),
    (b"/orders/a/%2E./b", "orders", "/b", ""),
    (b"/orders//a", "orders", "/a", ""),
    (b"//orders/a", "orders", "/a", ""),
    (b"/orders/a/./b", "orders", "/a/b", ""),
    (b"/orders/a/b/..", "orders", "/a/", ""),
    (b"/orders/%61dmin/x", "orders", "/admin/x", ""),
    (b"/orders/a%20b", "orders", "/a%20b", ""),
    (b"/orders/a%3fb", "orders", "/a%3Fb", ""),
    (b"/orders/x?q=/../admin&z", "orders", "/x", "q=/../admin&z"),
]

REFUSED = [
    b"/orders/a%2fb",
    b"/orders/a%2Fb",
    b"/orders/a%5cb",
    b"/orders/a\\b",
    b"/orders/..",
    b"/orders/a/../../b",
    b"/orders/%2e%2e/x",
    b"/orders/a%252e%252e/x",
    b"/orders/a%00",
    b"/orders/a%zz",
    b"/orders/a%2",
    b"/orders/admin;x=1/y",
    b"http://evil/orders/x",
    b"*",
    b"/orders/x#frag",
    b"/../orders/x",
    b"/orders/\xc3\xa9",
]


@pytest.mark.parametrize(("raw", "res", "path", "query"), OK)
def test_normalises(raw: bytes, res: str, path: str, query: str) -> None:
    t = split_target(raw)
    assert (t.resource, t.path, t.query) == (res, path, query)


@pytest.mark.parametrize("raw", REFUSED)
def test_refuses(raw: bytes) -> None:
    with pytest.raises(PathError):
        split_target(raw)


# Percent-decoded bytes must be strict UTF-8 (RFC 3629): overlong forms of "." and "/" are
# what lenient decoders turn into a traversal; the rest a decoder could read two ways.
INVALID_UTF8 = [
    b"/orders/%C0%AE%C0%AE/admin",  # overlong "..", two bytes
    b"/orders/a%C0%AFadmin",  # overlong "/"
    b"/orders/%E0%80%AE%E0%80%AE/x",  # overlong ".", three bytes
    b"/orders/%F0%80%80%AF",  # overlong "/", four bytes
    b"/orders/%C1%9C",  # overlong "\\"
    b"/orders/%ED%A0%80",  # a UTF-16 surrogate
    b"/orders/%F4%90%80%80",  # past U+10FFFF
    b"/orders/%80x",  # a lone continuation byte
    b"/orders/%E2%82",  # truncated sequence
    b"/orders/%FF",  # never valid
    b"/orders/%c3",  # lower-case escapes are decoded the same way
]


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8_after_percent_decoding_is_refused(raw: bytes) -> None:
    with pytest.raises(PathError) as info:
        split_target(raw)
    assert info.value.slug == "invalid_utf8"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/orders/caf%C3%A9", "/caf%C3%A9"),  # é
        (b"/orders/%e2%82%ac", "/%E2%82%AC"),  # €
        (b"/orders/%F0%9F%98%80/x", "/%F0%9F%98%80/x"),  # an emoji, four bytes
    ],
)
def test_valid_utf8_escapes_pass_unchanged(raw: bytes, path: str) -> None:
    assert split_target(raw).path == path


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        (b"/orders/a/../../x", "path_traversal"),
        (b"/orders/a%2fb", "encoded_separator"),
        (b"/orders/a%5Cb", "encoded_separator"),
        (b"/orders/a%00", "encoded_nul"),
        (b"/orders/%252e%252e/x", "double_encoding"),
        (b"/orders/a%zz", "bad_percent_encoding"),
        (b"/orders/a\\b", "invalid_character"),
        (b"http://evil/orders/x", "bad_target_form"),
    ],
)
def test_refusals_carry_their_reason_slug(raw: bytes, slug: str) -> None:
    with pytest.raises(PathError) as info:
        split_target(raw)
    assert info.value.slug == slug


BYPASSES = [
    b"/orders/x/../admin/y",
    b"/orders/%61dmin/y",
    b"/orders//admin/y",
    b"/orders/./admin/y",
    b"/orders/x/%2e%2e/admin/y",
    b"/orders/admin/./y",
]


@pytest.mark.parametrize("target", BYPASSES)
async def test_deny_rule_cannot_be_bypassed(make_gateway, upstream, target: bytes) -> None:
    gw = await make_gateway(deny=[("*", "/admin/*")])
    req = b"GET " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 403 "), out[:200]
    assert gw.policy.seen[-1].object == "/admin/y"
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [b"/orders/a%2fadmin", b"/orders/a\\..\\admin", b"/orders/../x", b"/orders/%C0%AE%C0%AE/x"],
)
async def test_ambiguous_paths_are_400(make_gateway, upstream, target: bytes) -> None:
    gw = await make_gateway()
    req = b"GET " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in out
    assert upstream.seen == []


async def test_upstream_sees_the_normalised_path(make_gateway, upstream) -> None:
    gw = await make_gateway()
    req = b"GET /orders/a/./b/../%63//d HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[-1]["path"] == "/a/c/d"
    assert gw.policy.seen[-1].object == "/a/c/d"
