"""The PostgreSQL flow driven message by message: simple queries, refusals, outcomes.

:class:`FlowHarness` (used by the other test_flow_* files too) builds a :class:`Flow` with
the fakes of tests/gateway/fakes.py, the real classifier and a relation catalog, and speaks
codec-encoded messages to it; the "server" is the test, answering as PostgreSQL would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from lockgate.config import PostgresResource
from lockgate.gateway.engine import Collaborators
from lockgate.gateway.postgres import codec
from lockgate.gateway.postgres.context import EngineContext
from lockgate.gateway.postgres.flow import PROBE_NAME, Flow, Out, SessionInfo
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope
from tests.gateway.fakes import (
    FakeAudit,
    FakeBroker,
    FakePolicy,
    FakePolicySet,
    FakeSigner,
    FakeVerifier,
    claims_for,
)

TOKEN = "tok-etl"
RESOURCE = "pg"
CATALOG = [
    ("public", "t"),
    ("sales", "orders"),
    ("sales", "t"),
    ("other", "secret"),
    ("pg_catalog", "pg_type"),
    ("information_schema", "tables"),
]


#: What goes upstream in place of a refused message, and what the server answers to it.
PROBE = codec.encode_message(codec.Describe("S", PROBE_NAME))
PROBE_FAILED = codec.error_response("26000", "prepared statement does not exist")
REFUSED_QUERY = [PROBE, codec.sync()]


def message(data: bytes) -> codec.Message:
    """The one message framed in ``data``."""
    reader = codec.MessageReader(1 << 20)
    reader.feed(data)
    msg = reader.next_message()
    assert msg is not None and reader.next_message() is None
    return msg


def types(frames: list[bytes]) -> list[str]:
    """The type letters of framed messages, in order."""
    out = []
    for frame in frames:
        reader = codec.MessageReader(1 << 20)
        reader.feed(frame)
        while (msg := reader.next_message()) is not None:
            out.append(chr(msg.type))
    return out


def errors(frames: list[bytes]) -> list[dict[str, str]]:
    found = []
    for frame in frames:
        reader = codec.MessageReader(1 << 20)
        reader.feed(frame)
        while (msg := reader.next_message()) is not None:
            if msg.type == codec.ERROR_RESPONSE:
                found.append(codec.decode_error_fields(msg.body))
    return found


class FlowHarness:
    def __init__(
        self,
        allow: list[tuple[str, str]] | None = None,
        deny: list[tuple[str, str]] | None = None,
        *,
        catalog: list[tuple[str, str]] | None = None,
        search_path: tuple[str, ...] = ("public",),
    ) -> None:
        self.claims = claims_for(RESOURCE)
        self.verifier = FakeVerifier({TOKEN: self.claims})
        self.policy = FakePolicySet(
            allow if allow is not None else [("*", "public.*"), ("*", "sales.*")], deny or []
        )
        self.audit = FakeAudit()
        shared = Collaborators(
            self.verifier, FakePolicy(self.policy), FakeBroker({}), self.audit, FakeSigner()
        )
        self.ctx = EngineContext(shared)
        self.resource = PostgresResource(
            name=RESOURCE, kind="postgres", host="127.0.0.1", database="app",
            username="gw", credential="pg-pw",
        )  # fmt: skip
        self.ctx.resources = {RESOURCE: self.resource}
        rel = RelationCatalog(catalog if catalog is not None else CATALOG)
        self.scope = SessionScope(search_path, rel)
        info = SessionInfo(self.claims, TOKEN, self.resource, self.ctx)
        self.flow = Flow(info, self.scope)

    # -- client side --------------------------------------------------------------------
    async def send(self, *frames: bytes) -> Out:
        """Client messages in; the Outs merged."""
        merged = Out()
        for frame in frames:
            out = await self.flow.from_client(message(frame))
            merged.to_server += out.to_server
            merged.to_client += out.to_client
            merged.close = merged.close or out.close
        return merged

    async def query(self, text: str) -> Out:
        return await self.send(codec.query(text))

    # -- server side --------------------------------------------------------------------
    def answer(self, *frames: bytes) -> list[bytes]:
        """Server messages in; what reaches the client."""
        to_client: list[bytes] = []
        for frame in frames:
            out = self.flow.from_server(message(frame))
            assert not out.to_server
            to_client += out.to_client
        return to_client

    # -- audit --------------------------------------------------------------------------
    def admitted(self) -> list[Any]:
        return list(self.audit.ahead)

    def outcomes(self, event: str | None = None) -> list[Any]:
        return [r for r in self.audit.records if event is None or r.event == event]


def cc(tag: str) -> bytes:
    return codec.command_complete(tag)


def rfq(status: str = "I") -> bytes:
    return codec.ready_for_query(status)


def server_error(sqlstate: str, text: str = "boom") -> bytes:
    return codec.error_response(sqlstate, text)


# -- simple query ---------------------------------------------------------------------------
async def test_allowed_query_is_forwarded_after_its_admitted_record() -> None:
    h = FlowHarness()
    out = await h.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]
    assert not out.to_client
    [admitted] = h.admitted()
    assert (admitted.event, admitted.action, admitted.object) == ("admitted", "read", "public.t")
    assert admitted.detail["statement"] == "SELECT * FROM t"
    assert admitted.detail["command"] == "SELECT"
    assert not h.outcomes()  # the outcome waits for the server
    frames = [
        codec.row_description([("a", 23)]),
        codec.data_row([b"1"]),
        codec.data_row([b"2"]),
        cc("SELECT 2"),
        rfq(),
    ]
    assert h.answer(*frames) == frames  # relayed unchanged, in order
    [outcome] = h.outcomes()
    assert outcome.event == "allowed" and outcome.decision == "allow"
    assert outcome.detail["rows"] == 2 and outcome.detail["tag"] == "SELECT 2"
    assert outcome.detail["ref"] == "fake/1"
    assert outcome.object == "public.t"
    assert h.flow.transaction_status == "I"


async def test_denied_query_is_not_forwarded_a_sync_goes_in_its_place() -> None:
    h = FlowHarness()
    out = await h.query("SELECT * FROM other.secret")
    assert out.to_server == REFUSED_QUERY and not out.to_client
    # The server fails the probe (as it would the statement): the refusal goes in its place.
    relayed = h.answer(PROBE_FAILED, rfq("I"))
    assert types(relayed) == ["E", "Z"]
    [error] = errors(relayed)
    assert error["C"] == "42501" and error["S"] == "ERROR"
    assert "read on other.secret" in error["M"] and h.claims.sub in error["M"]
    assert "no rule matches" in error["M"]
    assert not h.admitted()
    [denied] = h.outcomes()
    assert (denied.event, denied.decision, denied.action, denied.object) == (
        "denied", "deny", "read", "other.secret",
    )  # fmt: skip
    assert denied.detail["statement"] == "SELECT * FROM other.secret"


async def test_multi_statement_query_refused_whole_if_any_part_is_denied() -> None:
    h = FlowHarness()
    out = await h.query("SELECT * FROM t; DELETE FROM other.secret")
    assert out.to_server == REFUSED_QUERY
    [error] = errors(h.answer(PROBE_FAILED, rfq()))
    assert error["C"] == "42501" and "write on other.secret" in error["M"]
    assert not h.admitted()


async def test_multi_statement_query_one_record_per_statement() -> None:
    h = FlowHarness()
    await h.query("SELECT * FROM t; INSERT INTO sales.orders VALUES (1)")
    assert [(r.action, r.object) for r in h.admitted()] == [
        ("read", "public.t"),
        ("write", "sales.orders"),
    ]
    h.answer(cc("SELECT 0"), cc("INSERT 0 1"), rfq())
    assert [(r.object, r.detail["rows"]) for r in h.outcomes()] == [
        ("public.t", 0),
        ("sales.orders", 1),
    ]


async def test_statements_after_a_server_error_are_not_executed() -> None:
    h = FlowHarness()
    await h.query("INSERT INTO t VALUES (1); SELECT * FROM t")
    frames = h.answer(server_error("23505", "duplicate key"), rfq())
    assert types(frames) == ["E", "Z"]  # the server's error only: nothing injected
    first, second = h.outcomes()
    assert first.event == "allowed" and first.detail["sqlstate"] == "23505"
    assert first.detail["outcome"] == "error"
    assert second.detail["outcome"] == "not_executed" and second.reason == "not_executed"


async def test_server_trouble_is_an_upstream_error() -> None:
    h = FlowHarness()
    await h.query("SELECT * FROM t")
    h.answer(server_error("57014", "canceling statement"), rfq())
    [outcome] = h.outcomes()
    assert outcome.event == "upstream_error" and outcome.detail["sqlstate"] == "57014"


async def test_each_record_of_a_text_names_the_rule_that_allowed_its_own_objects() -> None:
    h = FlowHarness()
    await h.query("SELECT * FROM t; SELECT * FROM sales.orders; SELECT * FROM t, sales.orders")
    first, second, both = h.admitted()
    assert (first.object, first.rule) == ("public.t", "allow-public.*")
    assert (second.object, second.rule) == ("sales.orders", "allow-sales.*")
    assert both.detail["rules"] == {
        "read public.t": "allow-public.*",
        "read sales.orders": "allow-sales.*",
    }
    assert "rules" not in first.detail


async def test_a_long_text_is_judged_off_the_event_loop_and_forwarded() -> None:
    from lockgate.gateway.postgres.judge import THREAD_TEXT_CHARS

    h = FlowHarness()
    values = ",".join(str(n) for n in range(THREAD_TEXT_CHARS // 4))
    text = f"SELECT * FROM sales.orders WHERE id IN ({values})"  # noqa: S608 (numbers)
    assert len(text) >= THREAD_TEXT_CHARS
    out = await h.query(text)
    assert out.to_server == [codec.query(text)]
    assert [r.object for r in h.admitted()] == ["sales.orders"]
    assert await h.query("SELECT * FROM other.secret") is not None
    assert [r.object for r in h.outcomes("denied")] == ["other.secret"]


async def test_statement_without_object_is_admitted_under_the_builtin_rule() -> None:
    h = FlowHarness(allow=[])
    out = await h.query("BEGIN")
    assert out.to_server == [codec.query("BEGIN")]
    [admitted] = h.admitted()
    assert admitted.action == "session" and admitted.rule == "builtin:no-object"
    assert not h.policy.seen  # nothing to ask policy
    h.answer(cc("BEGIN"), rfq("T"))
    assert h.flow.transaction_status == "T"


async def test_empty_query_is_relayed() -> None:
    h = FlowHarness()
    out = await h.query("")
    assert out.to_server == [codec.query("")]
    frames = [codec.empty_query_response(), rfq()]
    assert h.answer(*frames) == frames


async def test_unplaceable_text_is_refused_with_literals_masked() -> None:
    h = FlowHarness()
    out = await h.query("SELEKT 'hunter2' FROM t")
    assert out.to_server == REFUSED_QUERY
    [error] = errors(h.answer(PROBE_FAILED, rfq()))
    assert error["C"] == "42501" and "refused" in error["M"]
    [denied] = h.outcomes()
    assert denied.event == "denied" and denied.reason == "parse_error"
    assert "hunter2" not in denied.detail["statement"]


async def test_unresolved_relation_is_refused() -> None:
    h = FlowHarness()
    out = await h.query("SELECT * FROM nowhere")
    assert out.to_server == REFUSED_QUERY
    assert h.outcomes()[0].reason == "unresolved_relation"


async def test_denial_while_a_query_is_in_flight_waits_for_its_turn() -> None:
    h = FlowHarness()
    first = await h.query("SELECT * FROM t")
    second = await h.query("SELECT * FROM other.secret")
    assert first.to_server == [codec.query("SELECT * FROM t")]
    assert second.to_server == REFUSED_QUERY and not second.to_client
    frames = h.answer(cc("SELECT 0"), rfq(), PROBE_FAILED, rfq())
    assert types(frames) == ["C", "Z", "E", "Z"]
    assert errors(frames)[0]["C"] == "42501"
    # The first query failed on the server: the refusal of the second still goes out.
    h2 = FlowHarness()
    await h2.query("SELECT * FROM t")
    await h2.query("SELECT * FROM other.secret")
    frames = h2.answer(server_error("XX000"), rfq(), PROBE_FAILED, rfq())
    assert [e["C"] for e in errors(frames)] == ["XX000", "42501"]


async def test_search_path_set_takes_effect_when_it_completes() -> None:
    h = FlowHarness()
    await h.query("SET search_path = sales")
    h.answer(cc("SET"), rfq())
    await h.query("SELECT * FROM orders")
    assert h.admitted()[-1].object == "sales.orders"


async def test_pipelined_search_path_change_is_judged_over_both_paths() -> None:
    # SET in flight: the next statement may run under either path; both must be allowed.
    h = FlowHarness(allow=[("*", "sales.*"), ("*", "public.*")])
    await h.query("SET search_path = sales")
    out = await h.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]
    objects = h.admitted()[-1].detail.get("objects") or [h.admitted()[-1].object]
    assert set(objects) == {"public.t", "sales.t"}
    h2 = FlowHarness(allow=[("*", "public.*")])
    await h2.query("SET search_path = sales")
    out = await h2.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY  # sales.t is not granted
    # Once the SET failed, public alone counts again.
    h2.answer(server_error("22023"), rfq(), PROBE_FAILED, rfq())
    out = await h2.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]


# -- token, audit -----------------------------------------------------------------------------
async def test_revoked_token_mid_session_refuses_and_closes() -> None:
    h = FlowHarness()
    h.verifier.revoked.add(h.claims.jti)
    out = await h.query("SELECT * FROM t")
    assert out.close and not out.to_server
    [error] = errors(out.to_client)
    assert error["S"] == "FATAL" and error["C"] == "42501" and "revoked" in error["M"]
    [record] = h.outcomes()
    assert record.event == "auth_failed" and record.reason == "revoked"
    assert TOKEN not in repr(record)


async def test_expired_token_mid_session_refuses_and_closes() -> None:
    h = FlowHarness()
    h.claims.exp = time.time() - 1
    out = await h.query("SELECT * FROM t")
    assert out.close and errors(out.to_client)[0]["S"] == "FATAL"
    assert h.outcomes()[0].reason == "expired"


async def test_audit_unavailable_refuses_without_forwarding() -> None:
    h = FlowHarness()
    h.audit.writable = False
    out = await h.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY and not out.close
    [error] = errors(h.answer(PROBE_FAILED, rfq()))
    assert error["C"] == "53000" and "audit" in error["M"]
    [record] = h.outcomes()
    assert record.event == "upstream_error" and record.reason == "audit_unavailable"
    h.audit.writable = True
    out = await h.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]


class _FailingDurability(FakeAudit):
    def durable(self) -> Any:
        async def fail() -> None:
            from lockgate.errors import AuditUnavailable

            raise AuditUnavailable("disk gone")

        return fail()


async def test_records_not_durable_refuse_the_statement() -> None:
    h = FlowHarness()
    failing = _FailingDurability()
    h.ctx.audit = failing
    h.ctx.record = h.ctx.records.emit
    out = await h.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY
    assert errors(h.answer(PROBE_FAILED, rfq()))[0]["C"] == "53000"


async def test_durability_is_awaited_before_forwarding() -> None:
    h = FlowHarness()
    order: list[str] = []

    class Slow(FakeAudit):
        def durable(self) -> Any:
            async def wait() -> None:
                order.append("durable")

            return wait()

    h.ctx.audit = Slow()
    out = await h.query("SELECT * FROM t")
    order.append("forwarded")
    assert order == ["durable", "forwarded"] and out.to_server


# -- misc -------------------------------------------------------------------------------------
async def test_function_call_protocol_is_refused() -> None:
    h = FlowHarness(allow=[("*", "*")])
    out = await h.send(codec.encode(codec.FUNCTION_CALL, b"\x00\x00\x04\x00\x00\x00\x00\x00\x00"))
    assert out.to_server == REFUSED_QUERY
    assert errors(h.answer(PROBE_FAILED, rfq()))[0]["C"] == "42501"
    assert h.outcomes()[0].object == "function_call_protocol"


async def test_terminate_closes() -> None:
    h = FlowHarness()
    out = await h.send(codec.terminate())
    assert out.close and not out.to_server


async def test_notifications_and_parameter_status_are_relayed() -> None:
    h = FlowHarness()
    frames = [
        codec.parameter_status("TimeZone", "UTC"),
        codec.notice_response("01000", "hello"),
        codec.encode(codec.NOTIFICATION, b"\x00\x00\x00\x07chan\x00payload\x00"),
    ]
    assert h.answer(*frames) == frames


@pytest.mark.parametrize(
    ("name", "value"),
    [("client_encoding", "SJIS"), ("standard_conforming_strings", "off")],
)
async def test_a_server_side_change_of_a_lexing_setting_ends_the_session(
    name: str, value: str
) -> None:
    """Server code the policy admitted (a function calling set_config, say) changed how the
    server lexes texts: the change is not relayed, the client hears FATAL and the session
    ends, audited."""
    h = FlowHarness()
    out = h.flow.from_server(message(codec.parameter_status(name, value)))
    assert out.close and types(out.to_client) == ["E"]
    (error,) = errors(out.to_client)
    assert (error["V"], error["C"]) == ("FATAL", "08006") and value in error["M"]
    (record,) = h.outcomes("upstream_error")
    assert record.reason == "upstream_session_unsafe"
    assert record.detail == {"setting": f"{name}={value}"}
    # The safe values (and every other setting) are relayed as they are.
    for frame in (
        codec.parameter_status("client_encoding", "UTF8"),
        codec.parameter_status("standard_conforming_strings", "on"),
    ):
        assert h.answer(frame) == [frame]


async def test_upstream_lost_gives_pending_statements_an_outcome() -> None:
    h = FlowHarness()
    await h.query("SELECT * FROM t; SELECT * FROM sales.orders")
    h.flow.upstream_lost("upstream_closed")
    assert [(r.event, r.reason) for r in h.outcomes()] == [
        ("upstream_error", "upstream_closed"),
        ("upstream_error", "upstream_closed"),
    ]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("x 'a''b' y", "x '***' y"),
        ("x E'a\\'b' y", "x '***' y"),
        ("x $$secret$$ y", "x '***' y"),
        ("x $t$sec$$ret$t$ y", "x '***' y"),
        ("x 'unterminated", "x '***'"),
    ],
)
def test_mask_literals(text: str, masked: str) -> None:
    from lockgate.gateway.postgres.flow_units import mask_literals

    assert mask_literals(text) == masked


async def test_a_fatal_instead_of_the_probe_answer_is_relayed() -> None:
    h = FlowHarness()
    await h.query("SELECT * FROM other.secret")
    shutdown = codec.error_response("57P01", "terminating connection", severity="FATAL")
    assert h.answer(shutdown) == [shutdown]


async def test_a_rollback_in_flight_may_take_the_path_back() -> None:
    h = FlowHarness(allow=[("*", "sales.*")])
    await h.query("BEGIN")
    h.answer(cc("BEGIN"), rfq("T"))
    await h.query("SET search_path = sales")
    h.answer(cc("SET"), rfq("T"))
    out = await h.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]
    assert h.admitted()[-1].object == "sales.t"
    h.answer(cc("SELECT 0"), rfq("T"))
    # The ROLLBACK is not answered yet: the next statement may run under public again.
    await h.query("ROLLBACK")
    out = await h.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY
    assert "public.t" in errors(h.answer(cc("ROLLBACK"), rfq("I"), PROBE_FAILED, rfq()))[0]["M"]
    # Settled: public alone.
    out = await h.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY


async def test_a_pipelined_reset_may_take_the_path_back_to_the_initial_one() -> None:
    h = FlowHarness(allow=[("*", "public.*")], search_path=("sales",))
    await h.query("SET search_path = public")
    h.answer(cc("SET"), rfq())
    out = await h.query("SELECT * FROM t")
    assert out.to_server == [codec.query("SELECT * FROM t")]  # public.t
    h.answer(cc("SELECT 0"), rfq())
    await h.query("RESET search_path")
    out = await h.query("SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY  # sales.t too, once the RESET runs


async def test_a_set_earlier_in_the_same_query_is_not_ignored() -> None:
    # The statement after it runs under the new path: never judged on the old one alone.
    h = FlowHarness(allow=[("*", "public.*")])
    out = await h.query("SET search_path = sales; SELECT * FROM t")
    assert out.to_server == REFUSED_QUERY
    assert not h.admitted()
