"""Cosmos master-key signing, checked against azure-cosmos's own header code as an oracle."""

from __future__ import annotations

import base64
import os
import time
from email.utils import formatdate
from types import SimpleNamespace
from urllib.parse import quote, unquote

import pytest
from azure.cosmos import _base as sdk_base
from azure.cosmos import auth as sdk_auth
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.credentials.cosmos import (
    AuthHeader,
    derive_task_key,
    is_rid_based,
    parse_auth_header,
    resource_of,
    sign,
    signing_link,
    string_to_sign,
    verify_master_signature,
)
from lockgate.errors import AuthenticationError

KEY = base64.b64encode(os.urandom(64)).decode()
OTHER = base64.b64encode(os.urandom(64)).decode()
NOW = 1_790_000_000.0
DATE = formatdate(NOW, usegmt=True)


def sdk_header(key: str, verb: str, path: str, x_ms_date: str) -> str:
    """The header azure-cosmos puts on the wire, built the way its GetHeaders builds it.

    The SDK computes the resource id/full name and type from its link; for the oracle we derive
    them from the path the same way the SDK's callers do (GetResourceIdOrFullNameFromLink), then
    let the SDK's own auth helper sign and quote.
    """
    # The SDK signs the ids the caller gave it, i.e. the decoded names.
    trimmed = unquote(path.strip("/"))
    segments = trimmed.split("/") if trimmed else []
    if not segments:
        resource_type, resource_id = "", ""
    elif len(segments) % 2:
        resource_type = segments[-1]
        parent = "/".join(segments[:-1])
        resource_id = sdk_base.GetResourceIdOrFullNameFromLink(parent) if parent else ""
    else:
        resource_type = segments[-2]
        resource_id = sdk_base.GetResourceIdOrFullNameFromLink(trimmed)
    conn = SimpleNamespace(master_key=key, resource_tokens=None)
    raw = sdk_auth._get_authorization_header(
        conn,
        verb,
        path,
        resource_id,
        sdk_base.IsNameBased(resource_id),
        resource_type,
        {"x-ms-date": x_ms_date},
    )
    return quote(raw, "-_.!~*'()")


PATHS = [
    ("GET", "/"),
    ("GET", "/dbs"),
    ("POST", "/dbs"),
    ("GET", "/dbs/Sales/"),
    ("DELETE", "/dbs/Sales"),
    ("GET", "/dbs/Sales/colls/Orders/"),
    ("POST", "/dbs/Sales/colls/Orders/docs/"),
    ("GET", "/dbs/Sales/colls/Orders/docs/Item-1/"),
    ("PUT", "/dbs/Sales/colls/Orders/docs/Item-1"),
    ("GET", "/dbs/Sales/colls/Orders/pkranges/"),
    ("GET", "/dbs/my%20db/colls/c%C3%A9/docs/a%20b/"),
    ("GET", "/dbs/vWJhAA==/colls/vWJhALuTsgA=/docs/"),  # _rid-based: lower-cased rid
    ("GET", "/dbs/vWJhAA==/colls/vWJhALuTsgA=/docs/vWJhALuTsgABAAAAAAAAAA==/"),
    ("GET", "/dbs/vWJhAA==/colls/"),
]


@pytest.mark.parametrize(("verb", "path"), PATHS)
def test_sign_matches_sdk_header(verb: str, path: str) -> None:
    rtype, link = resource_of(path)
    expected = sdk_header(KEY, verb.lower(), path, DATE)
    assert sign(KEY, verb, rtype, link, DATE) == expected
    verify_master_signature(KEY, expected, verb, path, DATE, now=NOW)


def test_wire_format_is_url_encoded() -> None:
    value = sign(KEY, "GET", "dbs", "", DATE)
    assert value.startswith("type%3Dmaster%26ver%3D1.0%26sig%3D")
    assert "/" not in value and "+" not in value and "=" not in value


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ("", "")),
        ("", ("", "")),
        ("/dbs", ("dbs", "")),
        ("/dbs/db1/", ("dbs", "dbs/db1")),
        ("/dbs/db1/colls", ("colls", "dbs/db1")),
        ("/dbs/db1/colls/c1", ("colls", "dbs/db1/colls/c1")),
        ("/dbs/db1/colls/c1/docs/", ("docs", "dbs/db1/colls/c1")),
        ("/dbs/db1/colls/c1/docs/item1?x=1", ("docs", "dbs/db1/colls/c1/docs/item1")),
        ("/dbs/a%20b/colls/c", ("colls", "dbs/a b/colls/c")),
        ("/dbs/d/colls/c/operations/partitionkeydelete/", ("colls", "dbs/d/colls/c")),
    ],
)
def test_resource_of(path: str, expected: tuple[str, str]) -> None:
    assert resource_of(path) == expected


def test_string_to_sign_shape() -> None:
    s = string_to_sign("GET", "DOCS", "dbs/Db/colls/C", "Tue, 01 Nov 1994 08:12:31 GMT")
    assert s == "get\ndocs\ndbs/Db/colls/C\ntue, 01 nov 1994 08:12:31 gmt\n\n"


def test_rid_rule() -> None:
    assert is_rid_based("dbs/vWJhAA==/colls/x")
    assert not is_rid_based("dbs/database/colls/x")  # 8 chars but decodes to 6 bytes
    assert not is_rid_based("dbs/Sales")
    assert not is_rid_based("offers/abc")
    assert signing_link("dbs/vWJhAA==/colls/vWJhALuTsgA=") == "vwjhalutsga="
    assert signing_link("dbs/Sales/colls/Orders") == "dbs/Sales/colls/Orders"


@pytest.mark.parametrize(
    ("verb", "path", "date"),
    [
        ("POST", "/dbs/Sales/colls/Orders/docs/Item-1", DATE),  # verb
        ("GET", "/dbs/Sales/colls/Orders/docs/Item-2", DATE),  # link
        ("GET", "/dbs/sales/colls/Orders/docs/Item-1", DATE),  # name case matters
        ("GET", "/dbs/Sales/colls/Orders/docs", DATE),  # type
        ("GET", "/dbs/Sales/colls/Orders/docs/Item-1", formatdate(NOW + 1, usegmt=True)),
    ],
)
def test_tampering_is_bad_signature(verb: str, path: str, date: str) -> None:
    header = sdk_header(KEY, "get", "/dbs/Sales/colls/Orders/docs/Item-1", DATE)
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, header, verb, path, date, now=NOW)
    assert err.value.reason == "bad_signature"


def test_wrong_key_is_bad_signature() -> None:
    header = sdk_header(OTHER, "get", "/dbs", DATE)
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, header, "GET", "/dbs", DATE, now=NOW)
    assert err.value.reason == "bad_signature"


def test_any_of_several_keys() -> None:
    header = sdk_header(OTHER, "get", "/dbs", DATE)
    verify_master_signature([KEY, OTHER], header, "GET", "/dbs", DATE, now=NOW)
    with pytest.raises(AuthenticationError):
        verify_master_signature([KEY], header, "GET", "/dbs", DATE, now=NOW)


@pytest.mark.parametrize("offset", [901, -901, 86400])
def test_skew_rejected(offset: float) -> None:
    header = sdk_header(KEY, "get", "/dbs", DATE)
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, header, "GET", "/dbs", DATE, now=NOW + offset)
    assert err.value.reason == "date_skew"


def test_skew_inside_window_accepted() -> None:
    header = sdk_header(KEY, "get", "/dbs", DATE)
    verify_master_signature(KEY, header, "GET", "/dbs", DATE, now=NOW + 899)


@pytest.mark.parametrize("date", [None, "", "yesterday"])
def test_missing_or_bad_date(date: str | None) -> None:
    header = sdk_header(KEY, "get", "/dbs", DATE)
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, header, "GET", "/dbs", date, now=NOW)
    assert err.value.reason == "missing_date"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer abc",
        "type=master&ver=1.0",
        "type=master&ver=2.0&sig=abc",
        "type=other&ver=1.0&sig=abc",
        "type=master&ver=1.0&sig=",
        "type=master&type=master&sig=abc",
        "x" * 20000,
    ],
)
def test_bad_headers(value: str) -> None:
    with pytest.raises(AuthenticationError) as err:
        parse_auth_header(value)
    assert err.value.reason == "bad_auth_header"


def test_parse_variants() -> None:
    assert parse_auth_header("type%3Dmaster%26ver%3D1.0%26sig%3Dab%2Bc%3D") == AuthHeader(
        "master", "1.0", "ab+c="
    )
    aad = parse_auth_header("type=aad&ver=1.0&sig=eyJ.eyJ.sig")
    assert (aad.type, aad.sig) == ("aad", "eyJ.eyJ.sig")
    assert "eyJ" not in repr(aad)


def test_aad_header_is_not_a_master_signature() -> None:
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, "type=aad&ver=1.0&sig=x.y.z", "GET", "/", DATE, now=NOW)
    assert err.value.reason == "bad_auth_header"


def test_error_messages_carry_no_secret() -> None:
    header = sdk_header(OTHER, "get", "/dbs", DATE)
    with pytest.raises(AuthenticationError) as err:
        verify_master_signature(KEY, header, "GET", "/dbs", DATE, now=NOW)
    sig = parse_auth_header(header).sig
    assert sig not in str(err.value) and KEY not in str(err.value)


def test_derive_task_key() -> None:
    secret = os.urandom(32)
    k1 = derive_task_key(secret, "jti-1")
    assert len(base64.b64decode(k1)) == 32
    assert derive_task_key(secret, "jti-1") == k1
    assert derive_task_key(secret, "jti-2") != k1
    assert derive_task_key(os.urandom(32), "jti-1") != k1
    with pytest.raises(ValueError):
        derive_task_key(b"short", "jti")
    with pytest.raises(ValueError):
        derive_task_key(secret, "")


def test_task_key_signature_round_trip_with_sdk() -> None:
    """A task signs with its derived key; the gateway recomputes the key from the jti."""
    secret = os.urandom(32)
    task_key = derive_task_key(secret, "abc")
    now = time.time()
    date = formatdate(now, usegmt=True)
    header = sdk_header(task_key, "post", "/dbs/d/colls/c/docs/", date)
    verify_master_signature(
        derive_task_key(secret, "abc"), header, "POST", "/dbs/d/colls/c/docs", date, now
    )
    with pytest.raises(AuthenticationError):
        verify_master_signature(
            derive_task_key(secret, "other"), header, "POST", "/dbs/d/colls/c/docs", date, now
        )


@settings(max_examples=200, deadline=None)
@given(
    verb=st.sampled_from(["get", "post", "put", "delete", "patch", "head"]),
    # The SDK itself raises on 8-character non-ASCII database names (its _rid sniffing
    # base64-decodes them), so the oracle is only asked about what it can answer.
    names=st.lists(
        st.text(min_size=1, max_size=12).filter(
            lambda s: "/" not in s and (len(s) != 8 or s.isascii())
        ),
        max_size=3,
    ),
    feed=st.booleans(),
)
def test_sign_matches_sdk_for_arbitrary_names(verb: str, names: list[str], feed: bool) -> None:
    types = ["dbs", "colls", "docs"]
    segments: list[str] = []
    for rtype, name in zip(types, names, strict=False):
        segments += [rtype, quote(name, safe="")]
    if feed and len(names) < 3:
        segments.append(types[len(names)])
    if not segments:
        return
    path = "/" + "/".join(segments) + "/"
    rtype, link = resource_of(path)
    # The SDK signs the *decoded* full name; feed it the decoded path.
    decoded = (
        "/" + "/".join(s if i % 2 == 0 else names[i // 2] for i, s in enumerate(segments)) + "/"
    )
    assert sign(KEY, verb, rtype, link, DATE) == sdk_header(KEY, verb, decoded, DATE)
