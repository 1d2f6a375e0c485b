"""What a provider says about a person (a name, an error's description) is text on the
console's pages: bidi controls and invisible characters in it are shown as code points."""

from __future__ import annotations

from typing import Any

from tests.console.test_auth import Console, make_console

__all__ = ["make_console"]  # the fixture, shared with the sign-in tests


async def test_a_name_from_the_provider_is_shown_with_its_overrides_as_code_points(
    make_console: Any,
) -> None:
    c: Console = await make_console(oidc=True)
    c.provider.user["preferred_username"] = "ann\u202emoc.elpmaxe@"
    done = await c.oidc_sign_in()
    assert done.status == 200
    assert "Welcome, ann&lt;U+202E&gt;moc.elpmaxe@." in await done.text()
    page = await (await c.client.get("/console/login")).text()
    assert "\u202e" not in page and "ann&lt;U+202E&gt;moc" in page
