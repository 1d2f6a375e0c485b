"""The PostgreSQL flow under the extended protocol: Parse/Bind/Execute, pipelines, COPY."""

from __future__ import annotations

import pytest

from lockgate.gateway.postgres import codec
from lockgate.gateway.postgres.codec import Bind, Close, Describe, Execute, Parse
from tests.gateway.postgres.test_flow import (
    PROBE,
    PROBE_FAILED,
    REFUSED_QUERY,
    FlowHarness,
    cc,
    errors,
    rfq,
    server_error,
    types,
)


def parse(text: str, name: str = "") -> bytes:
    return codec.encode_message(Parse(name, text, ()))


def bind(statement: str = "", portal: str = "") -> bytes:
    return codec.encode_message(Bind(portal, statement, (), (), ()))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return codec.encode_message(Execute(portal, max_rows))


def describe(kind: str = "P", name: str = "") -> bytes:
    return codec.encode_message(Describe(kind, name))


def close(kind: str, name: str) -> bytes:
    return codec.encode_message(Close(kind, name))


def batch(text: str, name: str = "") -> tuple[bytes, ...]:
    return (parse(text, name), bind(name), describe(), execute(), codec.sync())


def answers(tag: str, status: str = "I") -> tuple[bytes, ...]:
    return (
        codec.parse_complete(),
        codec.bind_complete(),
        codec.no_data(),
        cc(tag),
        rfq(status),
    )


async def test_allowed_batch_is_forwarded_with_one_record_per_execute() -> None:
    h = FlowHarness()
    frames = batch("INSERT INTO sales.orders VALUES ($1)")
    out = await h.send(*frames)
    assert out.to_server == list(frames)
    [admitted] = h.admitted()
    assert (admitted.action, admitted.object) == ("write", "sales.orders")
    assert admitted.detail["portal"] == "" and admitted.detail["statement_name"] == ""
    relayed = h.answer(*answers("INSERT 0 1"))
    assert types(relayed) == ["1", "2", "n", "C", "Z"]
    [outcome] = h.outcomes()
    assert outcome.event == "allowed" and outcome.detail["rows"] == 1


async def test_denied_parse_discards_until_sync_and_answers_in_order() -> None:
    h = FlowHarness()
    out = await h.send(*batch("SELECT * FROM other.secret"))
    assert out.to_server == [PROBE, codec.sync()]  # the probe, then only the client's Sync
    relayed = h.answer(PROBE_FAILED, rfq())
    assert types(relayed) == ["E", "Z"]
    [error] = errors(relayed)
    assert error["C"] == "42501" and "read on other.secret" in error["M"]
    [denied] = h.outcomes()
    assert denied.event == "denied" and denied.detail["statement_name"] == ""
    # The session stays usable.
    out = await h.send(*batch("SELECT * FROM t"))
    assert len(out.to_server) == 5


async def test_deny_in_the_middle_of_three_syncs() -> None:
    h = FlowHarness()
    first = batch("SELECT * FROM t")
    second = batch("SELECT * FROM other.secret")
    third = batch("SELECT * FROM sales.orders")
    out = await h.send(*first, *second, *third)
    assert out.to_server == [*first, PROBE, codec.sync(), *third]
    assert not out.to_client  # the refusal waits for the first batch's answers
    relayed = h.answer(*answers("SELECT 0"), PROBE_FAILED, rfq(), *answers("SELECT 0"))
    assert types(relayed) == ["1", "2", "n", "C", "Z", "E", "Z", "1", "2", "n", "C", "Z"]
    assert [r.object for r in h.admitted()] == ["public.t", "sales.orders"]


async def test_deny_after_forwarded_messages_of_the_same_batch() -> None:
    # Messages of the batch before the refused one stay forwarded; the rest is dropped.
    h = FlowHarness()
    out = await h.send(
        parse("SELECT * FROM t"),
        bind(),
        execute(),
        parse("SELECT * FROM other.secret"),
        bind(),
        execute(),
        codec.sync(),
    )
    assert out.to_server == [parse("SELECT * FROM t"), bind(), execute(), PROBE, codec.sync()]
    relayed = h.answer(
        codec.parse_complete(), codec.bind_complete(), cc("SELECT 0"), PROBE_FAILED, rfq()
    )
    assert types(relayed) == ["1", "2", "C", "E", "Z"]
    assert errors(relayed)[0]["C"] == "42501"


async def test_server_error_before_the_refusal_suppresses_it() -> None:
    h = FlowHarness()
    out = await h.send(
        parse("SELECT * FROM t"), bind(), execute(),
        parse("SELECT * FROM other.secret"), bind(), execute(), codec.sync(),
    )  # fmt: skip
    assert len(out.to_server) == 5
    relayed = h.answer(codec.parse_complete(), server_error("22P02"), rfq())
    # The server skipped the rest itself: one error for the client, as without the gateway.
    assert types(relayed) == ["1", "E", "Z"]
    assert errors(relayed)[0]["C"] == "22P02"
    # The Bind failed: the Execute after it did not run.
    [outcome] = h.outcomes("allowed")
    assert outcome.detail["outcome"] == "not_executed"


async def test_flush_after_a_refusal_still_gets_the_answers_before_it() -> None:
    # asyncpg-like: Parse + Describe + Flush, then wait before Sync.
    h = FlowHarness()
    out = await h.send(parse("SELECT * FROM t", "a"), describe("S", "a"), codec.flush())
    assert out.to_server == [parse("SELECT * FROM t", "a"), describe("S", "a"), codec.flush()]
    out = await h.send(parse("SELECT * FROM other.secret", "b"), codec.flush())
    assert out.to_server == [PROBE, codec.flush()]
    relayed = h.answer(
        codec.parse_complete(), codec.parameter_description([]), codec.no_data(), PROBE_FAILED
    )
    assert types(relayed) == ["1", "t", "n", "E"]  # the refusal, right after its turn
    assert errors(relayed)[0]["C"] == "42501"
    out = await h.send(codec.sync())
    assert out.to_server == [codec.sync()]
    assert types(h.answer(rfq())) == ["Z"]


async def test_named_statement_executed_many_times() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM sales.orders WHERE id = $1", "s1"), codec.sync())
    h.answer(codec.parse_complete(), rfq())
    for _ in range(3):
        out = await h.send(bind("s1"), execute(), codec.sync())
        assert len(out.to_server) == 3
        h.answer(codec.bind_complete(), cc("SELECT 1"), rfq())
    assert [r.object for r in h.admitted()] == ["sales.orders"] * 3
    assert [r.detail["statement_name"] for r in h.outcomes()] == ["s1"] * 3


async def test_execute_is_judged_again_under_the_policy_of_now() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM sales.orders", "s1"), bind("s1"), codec.sync())
    h.answer(codec.parse_complete(), codec.bind_complete(), rfq())
    h.policy.deny.append(("read", "sales.*"))
    out = await h.send(execute(), codec.sync())
    assert out.to_server == [PROBE, codec.sync()]
    assert errors(h.answer(PROBE_FAILED, rfq()))[0]["C"] == "42501"


async def test_named_statement_in_use_keeps_its_text() -> None:
    # Parse "s1" again: the server refuses it (42P05) and s1 stays the first text.
    h = FlowHarness(allow=[("*", "public.*")])
    await h.send(parse("SELECT * FROM t", "s1"), codec.sync())
    h.answer(codec.parse_complete(), rfq())
    await h.send(parse("SELECT * FROM t WHERE false", "s1"), codec.sync())
    h.answer(server_error("42P05"), rfq())
    out = await h.send(bind("s1"), execute(), codec.sync())
    assert len(out.to_server) == 3
    assert h.admitted()[-1].detail["statement"] == "SELECT * FROM t"


async def test_closed_statement_and_unknown_portal() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM t", "s1"), codec.sync())
    h.answer(codec.parse_complete(), rfq())
    out = await h.send(close("S", "s1"), bind("s1"), execute(), codec.sync())
    # The Bind goes on (the server refuses it); the Execute of no known portal is refused.
    assert out.to_server == [close("S", "s1"), bind("s1"), PROBE, codec.sync()]
    relayed = h.answer(codec.close_complete(), server_error("26000"), rfq())
    assert types(relayed) == ["3", "E", "Z"]  # the server failed first: its error alone
    assert h.outcomes()[-1].reason == "unknown_portal"


async def test_portal_suspended_and_resumed() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM t"), bind(), execute(max_rows=1), codec.flush())
    h.answer(codec.parse_complete(), codec.bind_complete(), codec.data_row([b"1"]))
    h.answer(codec.portal_suspended())
    await h.send(execute(max_rows=1), codec.sync())
    h.answer(codec.data_row([b"2"]), cc("SELECT 1"), rfq())
    assert [r.detail["outcome"] for r in h.outcomes()] == ["suspended", "done"]


async def test_execute_judged_under_the_path_its_portal_was_bound_with() -> None:
    h = FlowHarness(allow=[("*", "public.*")])
    await h.send(parse("SELECT * FROM t"), bind(), codec.flush())
    h.answer(codec.parse_complete(), codec.bind_complete())
    # The path changes (and settles) between Bind and Execute: both paths count.
    await h.query("SET search_path = sales")
    h.answer(cc("SET"), rfq("T"))
    out = await h.send(execute(), codec.sync())
    assert out.to_server == [PROBE, codec.sync()]  # sales.t is not granted
    assert "sales.t" in errors(h.answer(PROBE_FAILED, rfq()))[0]["M"]


async def test_sql_prepare_and_execute() -> None:
    h = FlowHarness()
    await h.query("PREPARE p AS SELECT * FROM sales.orders")
    h.answer(cc("PREPARE"), rfq())
    out = await h.query("EXECUTE p")
    assert out.to_server == [codec.query("EXECUTE p")]
    assert h.admitted()[-1].object == "sales.orders"
    h.answer(cc("SELECT 0"), rfq())
    await h.query("DEALLOCATE p")
    h.answer(cc("DEALLOCATE"), rfq())
    out = await h.query("EXECUTE p")
    assert out.to_server == REFUSED_QUERY  # unknown now: refused, not guessed


async def test_protocol_statement_run_by_sql_execute() -> None:
    # Protocol and SQL prepared statements share one name space on the server.
    h = FlowHarness(allow=[("*", "sales.*")])
    await h.send(parse("SELECT * FROM sales.orders", "s9"), codec.sync())
    h.answer(codec.parse_complete(), rfq())
    out = await h.query("EXECUTE s9")
    assert out.to_server == [codec.query("EXECUTE s9")]
    assert h.admitted()[-1].object == "sales.orders"


async def test_bind_of_a_sql_prepared_statement() -> None:
    h = FlowHarness(allow=[("*", "sales.*")])
    await h.query("PREPARE p AS SELECT * FROM sales.orders")
    h.answer(cc("PREPARE"), rfq())
    out = await h.send(bind("p"), execute(), codec.sync())
    assert len(out.to_server) == 3
    assert h.admitted()[-1].object == "sales.orders"


# -- COPY ---------------------------------------------------------------------------------------
async def test_copy_from_stdin_streams_and_records_rows() -> None:
    h = FlowHarness()
    out = await h.query("COPY sales.orders FROM STDIN")
    assert out.to_server and h.admitted()[-1].action == "write"
    h.answer(codec.copy_response(codec.COPY_IN_RESPONSE, 0, [0]))
    assert h.flow.copy_in
    for row in (b"1\n", b"2\n"):
        out = await h.send(codec.copy_data(row))
        assert out.to_server == [codec.copy_data(row)]
    out = await h.send(codec.copy_done())
    assert out.to_server == [codec.copy_done()]
    h.answer(cc("COPY 2"), rfq())
    assert h.outcomes()[-1].detail["rows"] == 2


async def test_copy_data_outside_copy_is_a_protocol_error() -> None:
    h = FlowHarness()
    with pytest.raises(codec.ProtocolError):
        await h.send(codec.copy_data(b"x"))


async def test_copy_stragglers_after_a_failed_copy_are_forwarded() -> None:
    h = FlowHarness()
    await h.query("COPY sales.orders FROM STDIN")
    h.answer(codec.copy_response(codec.COPY_IN_RESPONSE, 0, [0]))
    h.answer(server_error("22P02"), rfq())
    out = await h.send(codec.copy_data(b"late\n"), codec.copy_done())
    assert len(out.to_server) == 2  # the server ignores them, as it says it does
    await h.query("SELECT * FROM t")
    with pytest.raises(codec.ProtocolError):
        await h.send(codec.copy_data(b"x"))


async def test_copy_to_stdout_is_relayed() -> None:
    h = FlowHarness()
    await h.query("COPY sales.orders TO STDOUT")
    assert h.admitted()[-1].action == "read"
    frames = [
        codec.copy_response(codec.COPY_OUT_RESPONSE, 0, [0]),
        codec.copy_data(b"1\n"),
        codec.copy_done(),
        cc("COPY 1"),
        rfq(),
    ]
    assert h.answer(*frames) == frames
    assert h.outcomes()[-1].detail["rows"] == 1


async def test_discard_all_forgets_prepared_statements() -> None:
    h = FlowHarness()
    await h.query("PREPARE p AS SELECT * FROM sales.orders")
    h.answer(cc("PREPARE"), rfq())
    await h.query("DISCARD ALL")
    h.answer(cc("DISCARD ALL"), rfq())
    out = await h.query("EXECUTE p")
    assert out.to_server == REFUSED_QUERY


async def test_deallocate_and_discard_forget_protocol_statements() -> None:
    for text, tag in (("DEALLOCATE s9", "DEALLOCATE"), ("DEALLOCATE ALL", "DEALLOCATE ALL"),
                      ("DISCARD ALL", "DISCARD ALL")):  # fmt: skip
        h = FlowHarness()
        await h.send(parse("SELECT * FROM sales.orders", "s9"), codec.sync())
        h.answer(codec.parse_complete(), rfq())
        await h.query(text)
        h.answer(cc(tag), rfq())
        out = await h.send(bind("s9"), execute(), codec.sync())
        assert out.to_server == [bind("s9"), PROBE, codec.sync()], text
        assert h.outcomes()[-1].reason == "unknown_portal"


async def test_refusal_in_a_transaction_block_fails_it_like_a_server_error() -> None:
    h = FlowHarness()
    await h.query("BEGIN")
    h.answer(cc("BEGIN"), rfq("T"))
    out = await h.query("DELETE FROM other.secret")
    assert out.to_server == REFUSED_QUERY
    h.answer(PROBE_FAILED, rfq("E"))  # the server's transaction failed with the probe
    assert h.flow.transaction_status == "E"


async def test_the_probe_name_is_reserved() -> None:
    from lockgate.gateway.postgres.flow import PROBE_NAME

    h = FlowHarness()
    out = await h.send(parse("SELECT 1", PROBE_NAME), codec.sync())
    assert out.to_server == [PROBE, codec.sync()]
    assert h.outcomes()[-1].reason == "reserved_name"
    out = await h.query(f'PREPARE "{PROBE_NAME}" AS SELECT 1')
    assert out.to_server == REFUSED_QUERY


async def test_a_failed_parse_leaves_no_statement_behind() -> None:
    # The server refused the Parse (a column that does not exist): the name is free again,
    # and the next Parse of it names what the server will run.
    h = FlowHarness()
    await h.send(parse("SELECT nocol FROM sales.orders", "s1"), codec.sync())
    h.answer(server_error("42703"), rfq())
    await h.send(parse("DELETE FROM sales.orders", "s1"), codec.sync())
    h.answer(codec.parse_complete(), rfq())
    await h.send(bind("s1"), execute(), codec.sync())
    assert (h.admitted()[-1].action, h.admitted()[-1].detail["statement"]) == (
        "write",
        "DELETE FROM sales.orders",
    )


async def test_a_parse_skipped_after_an_error_leaves_no_statement_behind() -> None:
    h = FlowHarness()
    out = await h.send(
        parse("SELECT * FROM t"), bind(), execute(),
        parse("SELECT * FROM sales.orders", "s2"), codec.sync(),
    )  # fmt: skip
    assert len(out.to_server) == 5
    h.answer(codec.parse_complete(), codec.bind_complete(), server_error("22012"), rfq())
    out = await h.send(bind("s2"), execute(), codec.sync())
    assert out.to_server == [bind("s2"), PROBE, codec.sync()]  # s2 does not exist
    assert h.outcomes()[-1].reason == "unknown_portal"


async def test_a_failed_bind_leaves_no_portal_behind() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM t"), bind(), codec.sync())
    h.answer(codec.parse_complete(), server_error("08P01"), rfq())
    out = await h.send(execute(), codec.sync())
    assert out.to_server == [PROBE, codec.sync()]


async def test_copy_rows_sent_before_the_server_asks() -> None:
    # asyncpg streams CopyData right behind the COPY Query.
    h = FlowHarness()
    out = await h.send(
        codec.query("COPY sales.orders FROM STDIN"), codec.copy_data(b"1\n"), codec.copy_done()
    )
    assert len(out.to_server) == 3
    h.answer(codec.copy_response(codec.COPY_IN_RESPONSE, 0, [0]), cc("COPY 1"), rfq())
    assert h.outcomes()[-1].detail["rows"] == 1


async def test_copy_rows_after_a_refused_copy_are_dropped_by_the_server() -> None:
    h = FlowHarness()
    out = await h.send(
        codec.query("COPY other.secret FROM STDIN"), codec.copy_data(b"1\n"), codec.copy_done()
    )
    assert out.to_server == [*REFUSED_QUERY, codec.copy_data(b"1\n"), codec.copy_done()]
    assert errors(h.answer(PROBE_FAILED, rfq()))[0]["C"] == "42501"
    await h.query("SELECT 1")
    with pytest.raises(codec.ProtocolError):
        await h.send(codec.copy_data(b"x"))


async def test_extended_copy_with_its_sync_sent_early() -> None:
    # libpq: Parse/Bind/Execute/Sync, then the rows, CopyDone and another Sync. The server
    # ignores the first Sync once in COPY: one ReadyForQuery only.
    h = FlowHarness()
    out = await h.send(
        parse("COPY sales.orders FROM STDIN"), bind(), execute(), codec.sync(),
        codec.copy_data(b"1\n"), codec.copy_done(), codec.sync(),
    )  # fmt: skip
    assert len(out.to_server) == 7
    h.answer(
        codec.parse_complete(),
        codec.bind_complete(),
        codec.copy_response(codec.COPY_IN_RESPONSE, 0, [0]),
        cc("COPY 1"),
        rfq(),
    )
    assert h.outcomes()[-1].detail["rows"] == 1
    # In step again: the next statement's outcome and a refusal land where they belong.
    await h.query("SELECT * FROM t")
    await h.query("SELECT * FROM other.secret")
    relayed = h.answer(cc("SELECT 0"), rfq(), PROBE_FAILED, rfq())
    assert errors(relayed)[0]["C"] == "42501"
    assert h.outcomes("allowed")[-1].detail["tag"] == "SELECT 0"


async def test_extended_copy_failing_before_copy_keeps_its_syncs() -> None:
    h = FlowHarness()
    await h.send(parse("COPY sales.orders FROM STDIN"), bind(), execute(), codec.sync())
    h.answer(codec.parse_complete(), codec.bind_complete(), server_error("42501"), rfq())
    await h.send(codec.copy_fail("gave up"), codec.sync())
    h.answer(rfq())
    await h.query("SELECT * FROM t")
    h.answer(cc("SELECT 0"), rfq())
    assert h.outcomes("allowed")[-1].detail["tag"] == "SELECT 0"


async def test_token_checked_for_every_execute() -> None:
    h = FlowHarness()
    await h.send(parse("SELECT * FROM t", "s1"), bind("s1"), execute(), codec.sync())
    h.answer(codec.parse_complete(), codec.bind_complete(), cc("SELECT 0"), rfq())
    h.verifier.revoked.add(h.claims.jti)
    out = await h.send(bind("s1"), execute())
    assert out.close and out.to_server == [bind("s1")]
    assert errors(out.to_client)[0]["S"] == "FATAL"
    assert h.outcomes("auth_failed")[0].reason == "revoked"


async def test_describe_of_an_unknown_statement_is_forwarded() -> None:
    h = FlowHarness()
    out = await h.send(describe("S", "nope"), codec.sync())
    assert out.to_server == [describe("S", "nope"), codec.sync()]
    relayed = h.answer(server_error("26000"), rfq())
    assert types(relayed) == ["E", "Z"] and errors(relayed)[0]["C"] == "26000"


@pytest.mark.parametrize(
    "frame",
    [
        codec.encode(codec.BIND, b"portal-without-end"),
        codec.encode(codec.BIND, b"\x00stmt-without-end"),
        codec.encode(codec.EXECUTE, b"\xff\xfe\x00\x00\x00\x00\x00"),
    ],
)
async def test_malformed_bind_or_execute_is_a_protocol_error(frame: bytes) -> None:
    h = FlowHarness()
    with pytest.raises(codec.ProtocolError):
        await h.send(frame)
