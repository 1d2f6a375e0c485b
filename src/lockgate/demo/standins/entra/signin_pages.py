"""The HTML pages of the test Entra ID's sign-in: the sign-in form, the error page, the
``form_post`` answer and the signed-out page.

Deterministic on purpose, so a browser test can fill them the way a person does with the
service's own page: the username input is ``name=login id=i0116``, the password
``name=passwd id=i0118``, the submit button ``id=idSIButton9`` and the cancel button
``id=idBtn_Back`` (the ids the service's pages use). Every input has a label; every value
shown is HTML-escaped (a redirect URI or a login hint is the caller's text).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from aiohttp import web

__all__ = ["error_page", "form_post_page", "sign_in_page", "signed_out_page"]

_STYLE = (
    "body{font-family:sans-serif;background:#f2f2f2;margin:0}"
    "main{background:#fff;max-width:440px;margin:4rem auto;padding:2.5rem;"
    "box-shadow:0 2px 6px rgba(0,0,0,.2)}"
    "label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;box-sizing:border-box}"
    ".buttons{margin-top:1.5rem;display:flex;gap:.5rem;justify-content:flex-end}"
    "button{padding:.4rem 1.5rem}#idSIButton9{background:#0067b8;color:#fff;border:0}"
    "button:focus,input:focus{outline:2px solid #000;outline-offset:2px}"
    ".error{color:#e81123}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
    return web.Response(
        text=html, status=status, content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )  # fmt: skip


def sign_in_page(
    action: str, ctx: str, app_name: str, *, login_hint: str = "", error: str = ""
) -> web.Response:
    """The sign-in form for the pending request ``ctx``; ``error`` shown above the inputs."""
    shown_error = (
        f'<p id="passwordError" class="error" role="alert">{escape(error)}</p>' if error else ""
    )
    body = (
        f"<h1>Sign in</h1><p>to continue to {escape(app_name)}</p>{shown_error}"
        f'<form method="post" action="{escape(action)}" novalidate>'
        f'<input type="hidden" name="ctx" value="{escape(ctx)}">'
        '<label for="i0116">Email, phone, or Skype</label>'
        f'<input type="email" name="login" id="i0116" value="{escape(login_hint)}" '
        'autocomplete="username" required>'
        '<label for="i0118">Password</label>'
        '<input type="password" name="passwd" id="i0118" autocomplete="current-password" '
        "required>"
        '<div class="buttons">'
        # Sign in comes first: pressing Enter in an input submits the first button.
        '<button type="submit" name="action" value="signin" id="idSIButton9">Sign in</button>'
        '<button type="submit" name="action" value="cancel" id="idBtn_Back" formnovalidate>'
        "Cancel</button></div></form>"
    )
    return _page("Sign in to your account", body, 400 if error else 200)


def error_page(description: str, status: int = 400) -> web.Response:
    """What the service shows when it cannot send the browser back to the app."""
    body = (
        "<h1>Sorry, but we're having trouble signing you in.</h1>"
        f'<p id="errorDescription" role="alert">{escape(description)}</p>'
    )
    return _page("Sign in to your account", body, status)


def form_post_page(redirect_uri: str, params: Mapping[str, str]) -> web.Response:
    """``response_mode=form_post``: a form that posts the answer to the app (submitted by a
    script, or by the button when scripts are off)."""
    fields = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )
    body = (
        f'<form method="post" action="{escape(redirect_uri)}">{fields}'
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<button type="submit">Submit</button></noscript></form>'
        "<script>document.forms[0].submit()</script>"
    )
    return _page("Working...", body)


def signed_out_page() -> web.Response:
    return _page("Sign out", "<h1>You signed out of your account</h1>"
                 "<p>It's a good idea to close all browser windows.</p>")  # fmt: skip
