"""What every console page shares: the ``shown`` filter for text positions."""

from __future__ import annotations

from markupsafe import Markup

from lockgate.console.web import environment, shown


def test_format_and_control_characters_are_written_as_code_points() -> None:
    assert shown("fin\u202eance") == "fin<U+202E>ance"  # a right-to-left override
    assert shown("a\u2066b\u2069c\u200fd\u061ce") == "a<U+2066>b<U+2069>c<U+200F>d<U+061C>e"
    assert shown("zero\u200bwidth\ufeff") == "zero<U+200B>width<U+FEFF>"
    assert shown("bell\x07 del\x7f c1\x85 cr\r") == "bell<U+0007> del<U+007F> c1<U+0085> cr<U+000D>"


def test_plain_text_tabs_newlines_and_other_values_are_as_they_were() -> None:
    for text in ("finance_daily", "données", "データ", "a b\u00a0c", "tab\there\nline"):
        assert shown(text) == text
    assert shown(None) is None and shown(3) == 3


def test_in_a_template_text_is_shown_and_links_and_values_stay_exact() -> None:
    page = environment().from_string(
        '<a href="/console/audit?{{ {"dag": dag} | urlencode }}">{{ dag | shown }}</a>'
        '<input value="{{ dag }}">'
    )
    html = page.render(dag="fin\u202e<b>")
    assert ">fin&lt;U+202E&gt;&lt;b&gt;</a>" in html
    assert "dag=fin%E2%80%AE%3Cb%3E" in html and 'value="fin\u202e&lt;b&gt;"' in html


def test_markup_stays_markup_with_its_code_points_escaped() -> None:
    out = shown(Markup("<b>a\u202eb</b>"))
    assert isinstance(out, Markup) and out == "<b>a&lt;U+202E&gt;b</b>"
