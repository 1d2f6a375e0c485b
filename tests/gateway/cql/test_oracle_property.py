"""Property: the node never executes what the gateway's audit does not show as allowed.

Hypothesis writes CQL the way an attacker would: statements wrapped in ``--``, ``//`` and
``/* */`` comments ended by CR, LF or CRLF, comments hiding statements, strings with ``''``
and ``$$``, quoted and mixed-case names, ``BEGIN BATCH`` texts with and without ``;``, USE of
a keyspace holding same-named tables, conditional writes (which read the row they find),
driver metadata reads, PREPARE and EXECUTE of the ids it got back. Each example plays rounds
on two connections of one principal — one granted reads and writes, or one granted writes
only — one request at a time or pipelined (all frames in one write), through the real
gateway in front of the fake node. The judge (``oracle.judge``) then holds the node's
execution log against the audit of that principal: every executed request, USE and metadata
reads included, covered by an ``allow`` record with the same action and object, and nothing
but those two executed outside the principal's grant (``GRANT`` or ``WRITE_ONLY``).

One sync test drives its own event loop, so the stack is started once for all examples.
"""

# ruff: noqa: S608  (building CQL text from parts is this test's whole point)
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.demo.standins.cqlserver.client import (
    Answer,
    execute_frame,
    prepare_frame,
    query_frame,
)

from .engine_stack import stop_stack
from .test_oracle import GRANT, WRITE_ONLY, Oracle

REFS = [
    "orders", "items", "secrets", "ks.orders", "ks.items", "ks.secrets", "other.orders",
    "other.items", '"orders"', "KS.Items", '"ks"."secrets"', 'Other."orders"', "ITEMS",
]  # fmt: skip
KEYSPACES = ["ks", "other", '"ks"', "Other", "KS", '"other"']
STRINGS = [
    "'x'", "'it''s'", "$$a -- b$$", "$$/* c */$$", "'\r-- '", "'; DELETE FROM secrets'",
    "$$\n$$", "''", "'*/'", '$$"q"$$',
]  # fmt: skip
GAPS = ["", " ", "\n", "\r", "\r\n", "\t", " \r\n "]
LINE_ENDS = ["\n", "\r", "\r\n"]

# Names the gateway grants once the connection is in ``ks``: the visible half of an attack.
GRANTED_LOOKING = ["orders", "items", "ks.orders", "ks.items", "ITEMS", '"orders"', "KS.Items"]
UNQUALIFIED = ["orders", "items", "secrets", '"orders"', "ITEMS"]
# Names no rule grants reads of (and orders is not granted for writes): the hidden half.
FORBIDDEN = [
    "secrets",
    "ks.secrets",
    "other.orders",
    "other.items",
    'Other."orders"',
    '"ks"."secrets"',
]
CR_FIRST = ["\r", "\r", "\n", "\r\n"]  # CR is what the attacks need; LF and CRLF stay in

refs = st.sampled_from(REFS)
strings = st.sampled_from(STRINGS)


def _column(ref: str) -> str:
    return "item" if "orders" in ref.lower() else "v"


selects = st.builds(
    lambda r, where: f"SELECT * FROM {r}{' WHERE id = 1' if where else ''}",
    refs,
    st.booleans(),
)
inserts = st.builds(
    lambda r, s: f"INSERT INTO {r} (id, {_column(r)}) VALUES (1, {s})",
    refs,
    strings,
)
updates = st.builds(
    lambda r, s: f"UPDATE {r} SET {_column(r)} = {s} WHERE id = 1",
    refs,
    strings,
)
deletes = st.builds(lambda r: f"DELETE FROM {r} WHERE id = 1", refs)
writes = st.one_of(inserts, updates, deletes)
# Conditional writes: a failed condition answers with the row found, so they read as well.
conditional = st.builds(
    lambda w, k: f"{w} IF {'NOT ' if w.startswith('INSERT') else ''}EXISTS{k}",
    writes,
    st.sampled_from(["", ";"]),
)
metadata = st.builds(
    lambda t: f"SELECT * FROM {t}",
    st.sampled_from(["system.local", "system.peers", "system_schema.tables", "SYSTEM.local"]),
)
granted_writes = st.builds(
    lambda r, s: f"UPDATE {r} SET v = {s} WHERE id = 1",
    st.sampled_from(["items", "ks.items", "ITEMS", "KS.Items"]),
    strings,
)
granted_reads = st.builds(lambda r: f"SELECT * FROM {r}", st.sampled_from(GRANTED_LOOKING))
forbidden = st.one_of(
    st.builds(lambda r: f"SELECT * FROM {r}", st.sampled_from(FORBIDDEN)),
    st.builds(lambda r: f"DELETE FROM {r} WHERE id = 1", st.sampled_from([*FORBIDDEN, "orders"])),
)
forbidden_writes = st.builds(
    lambda r, s: f"INSERT INTO {r} (id, {_column(r)}) VALUES (1, {s})",
    st.sampled_from([*FORBIDDEN, "orders", "ks.orders"]),
    strings,
)
unqualified = st.one_of(
    st.builds(lambda r: f"SELECT * FROM {r}", st.sampled_from(UNQUALIFIED)),
    st.builds(lambda s: f"UPDATE items SET v = {s} WHERE id = 1", strings),
)
uses = st.builds(lambda k: f"USE {k}", st.sampled_from(KEYSPACES))
child_seps = st.sampled_from([" ", "; ", "\n", "\r", ";\r\n", " -- c\r", " // c\n", " /* c */ "])


@st.composite
def batches(draw: st.DrawFn) -> str:
    first = draw(st.one_of(granted_writes, writes))  # a granted first child hides the rest
    others = st.one_of(forbidden_writes, writes, conditional)
    children = [first, *draw(st.lists(others, max_size=2))]
    parts = [draw(st.sampled_from(["BEGIN BATCH", "BEGIN UNLOGGED BATCH", "begin batch"]))]
    for child in children:
        parts += [draw(child_seps), child]
    parts += [draw(child_seps), "APPLY BATCH", draw(st.sampled_from(["", ";", " ;;"]))]
    return "".join(parts)


statements = st.one_of(selects, writes, conditional, uses, metadata, batches())


@st.composite
def comments(draw: st.DrawFn) -> str:
    filler = draw(
        st.lists(
            st.one_of(
                st.sampled_from([" x ", "/* ", " */", " -- ", " // ", "\n", "\r", "'", "$$"]),
                statements,
            ),
            max_size=3,
        )
    )
    body = "".join(filler)
    if draw(st.booleans()):
        return draw(st.sampled_from(["--", "//"])) + body + draw(st.sampled_from(LINE_ENDS))
    return "/*" + body.replace("*/", "* /") + "*/"


@st.composite
def hidden(draw: st.DrawFn) -> str:
    """A statement after a CR-ended line comment, a granted-looking one in a block comment."""
    lead = draw(st.sampled_from(["--", "//"]))
    tail = draw(st.sampled_from(["--", "//"]))
    inner = draw(st.one_of(forbidden, statements))
    visible = draw(st.one_of(granted_reads, granted_writes, statements))
    end, gap, end2 = draw(st.sampled_from(CR_FIRST)), draw(st.sampled_from(GAPS)), draw(ends)
    return f"{lead} x{end}{inner}{gap}/*{end2}{visible} {tail} */"


ends = st.sampled_from(LINE_ENDS)


composites = st.lists(
    st.one_of(statements, comments(), st.sampled_from(GAPS), st.just(";")), min_size=1, max_size=5
).map("".join)
texts = st.one_of(hidden(), batches(), statements, composites)  # the attack shapes first
steps = st.one_of(
    st.tuples(st.just("query"), texts),
    st.tuples(st.just("prepare"), st.one_of(selects, writes, conditional, metadata, batches())),
    st.tuples(st.just("execute"), st.integers(0, 7)),
    # USE, then (in the same round, so pipelined when the round is) an unqualified statement
    st.tuples(st.sampled_from(["use+query", "use+prepare"]), st.tuples(uses, unqualified)),
)
rounds = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from([True, True, False]),  # pipelined or one request at a time
        st.lists(steps, min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)


Plan = list[tuple[int, bool, list[tuple[str, Any]]]]  # (connection, pipelined, steps) rounds


async def play(oracle: Oracle, dag: str, plan: Plan, grant: set[tuple[str, str]]) -> list[str]:
    clients = [await oracle.connect(dag), await oracle.connect(dag)]
    since = oracle.mark()
    prepared: list[bytes] = []
    try:
        for which, pipelined, round_steps in plan:
            client = clients[which]
            frames = []
            for kind, arg in round_steps:
                stream = client.stream()
                if kind.startswith("use+"):
                    use, text = arg
                    frames.append(query_frame(stream, use))
                    make = query_frame if kind == "use+query" else prepare_frame
                    frames.append(make(client.stream(), text))
                elif kind == "query":
                    frames.append(query_frame(stream, str(arg)))
                elif kind == "prepare":
                    frames.append(prepare_frame(stream, str(arg)))
                elif prepared:
                    frames.append(execute_frame(stream, prepared[int(str(arg)) % len(prepared)]))
            answers: list[Answer | None] = []
            try:
                if pipelined:
                    await client.send(*frames)
                    answers = list((await client.answers(len(frames))).values())
                else:
                    answers = [await client.request(frame) for frame in frames]
            except ConnectionError:
                pass  # the gateway may close a connection it cannot judge; the node log tells
            prepared += [a.prepared_id for a in answers if a is not None and a.prepared_id]
    finally:
        for client in clients:
            await client.close()
    return oracle.breaches(since, dag, grant)


@pytest.mark.slow
def test_node_executes_only_what_the_audit_shows_allowed(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    oracle = loop.run_until_complete(Oracle.start(tmp_path))
    numbers = itertools.count()

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=rounds, write_only=st.booleans())
    def check(plan: Plan, write_only: bool) -> None:
        dag = f"{'writer' if write_only else 'oracle'}{next(numbers)}"
        grant = WRITE_ONLY if write_only else GRANT
        run = play(oracle, dag, plan, grant)
        breaches = loop.run_until_complete(asyncio.wait_for(run, 60))
        assert breaches == [], "\n".join(breaches)

    try:
        check()
    finally:
        loop.run_until_complete(stop_stack(oracle.stack))
        loop.close()
