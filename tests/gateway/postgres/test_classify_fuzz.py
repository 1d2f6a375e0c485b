"""Whatever text arrives, classification places it or refuses it: it never fails otherwise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.gateway.postgres.classify import Unplaceable, classify
from lockgate.gateway.postgres.relation_catalog import RelationCatalog
from lockgate.gateway.postgres.scope import SessionScope

from .test_classify_oracle import CORPUS

CATALOG = RelationCatalog(
    [("public", "t"), ("public", "u"), ("sales", "t"), ("pg_catalog", "pg_class")],
    ["public", "sales", "pg_catalog"],
)
_TEXT = (
    "SELECT INSERT UPDATE DELETE MERGE INTO FROM WHERE WITH RECURSIVE AS ( ) , ; * t u "
    "sales.t pg_class JOIN ON USING LATERAL UNION ALL EXCEPT VALUES SET search_path TO = "
    "DEFAULT LOCAL RESET BEGIN COMMIT ROLLBACK SAVEPOINT RELEASE PREPARE EXECUTE DEALLOCATE "
    "DECLARE CURSOR FETCH CLOSE COPY STDIN STDOUT CREATE TABLE TEMP VIEW DROP ALTER RENAME "
    "GRANT REVOKE ROLE DO CALL f() nextval('t') 1 'x' $$y$$ E'\\'' -- /* */ \"Q\" ONLY "
    "RETURNING FOR UPDATE OPERATOR(public.+) + EXPLAIN ANALYZE TRUNCATE LOCK LISTEN NOTIFY"
)
_WORDS = tuple(_TEXT.split())


def _survives(sql: str) -> None:
    scope = SessionScope(("public",), CATALOG, user="gw")
    try:
        result = classify(sql, scope)
    except Unplaceable as exc:
        assert exc.reason and str(exc)
        return
    for stmt in result.statements:
        scope.statement_done(stmt, stmt.command)
    scope.ready("I")
    scope.key()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=25).map(" ".join))
def test_token_soup_is_placed_or_refused(sql: str) -> None:
    _survives(sql)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_placed_or_refused(sql: str) -> None:
    _survives(sql)


@st.composite
def _mangled(draw: st.DrawFn) -> str:
    """A statement of the oracle corpus, cut, doubled or spliced with another."""
    texts = [sql for _, sql in CORPUS]
    first, second = draw(st.sampled_from(texts)), draw(st.sampled_from(texts))
    cut = draw(st.integers(0, len(first)))
    how = draw(st.sampled_from(["cut", "splice", "join", "nest"]))
    if how == "cut":
        return first[:cut]
    if how == "splice":
        return first[:cut] + second[draw(st.integers(0, len(second))) :]
    if how == "join":
        return f"{first}; {second}"
    return f"WITH w AS ({first}) SELECT * FROM w; EXPLAIN {second}"  # noqa: S608


@settings(max_examples=400, deadline=None)
@given(_mangled())
def test_mangled_statements_are_placed_or_refused(sql: str) -> None:
    _survives(sql)
