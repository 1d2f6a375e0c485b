"""The test Entra ID's sign-in (authorization code flow with PKCE, OpenID Connect) against
the real MSAL Python library: MSAL builds the authorize request, checks ``state`` and the ID
token's ``nonce``, and redeems the code with its PKCE verifier; the sign-in form is filled
the way a browser does (its form's own action and hidden fields)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests

from lockgate.demo.standins.entra import FakeEntra, start
from lockgate.demo.standins.entra.thread import LoopThread, server_tls

msal = pytest.importorskip("msal")
# MSAL recommends response_mode=form_post; most tests here read the plain query answer.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")

CONSOLE = "console-app"
OTHER = "other-app"
PUBLIC = "public-app"
SECRET = "console-secret-value"
REDIRECT = "https://127.0.0.1:8443/console/auth/callback"
ADMIN, ADMIN_PASSWORD = "alice@contoso.example", "alice-pw"
VIEWER, VIEWER_PASSWORD = "bob@contoso.example", "bob-pw"


@dataclass
class Tenant:
    entra: FakeEntra
    ca: Path

    @property
    def authority(self) -> str:
        return f"{self.entra.base_url}/{self.entra.tenant}"

    def app(self, client_id: str = CONSOLE, secret: str = SECRET) -> Any:
        return msal.ConfidentialClientApplication(
            client_id, client_credential=secret, authority=self.authority,
            instance_discovery=False, http_client=self.browser(),
        )  # fmt: skip

    def public_app(self) -> Any:
        return msal.PublicClientApplication(
            PUBLIC, authority=self.authority, instance_discovery=False,
            http_client=self.browser(),
        )  # fmt: skip

    def browser(self) -> requests.Session:
        session = requests.Session()
        # A CA bundle named in the environment (REQUESTS_CA_BUNDLE) would win over the
        # session's own ``verify``: trust only the test CA.
        session.trust_env = False
        session.verify = str(self.ca)
        return session


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    ctx, ca = server_tls(tmp_path_factory.mktemp("entra-tls"))
    entra = FakeEntra()
    entra.register_app(
        CONSOLE, [REDIRECT, "https://127.0.0.1:8443/other-callback"], secret=SECRET,
        app_roles=["Lockgate.Admin", "Lockgate.Operator", "Lockgate.Viewer"],
        name="Lockgate console",
    )  # fmt: skip
    entra.register_app(OTHER, [REDIRECT], secret="other-secret")
    entra.register_app(PUBLIC, ["http://localhost:8400/callback"])
    entra.add_user(ADMIN, ADMIN_PASSWORD, name="Alice Admin",
                   roles=["Lockgate.Admin", "Unrelated.Role"])  # fmt: skip
    entra.add_user(VIEWER, VIEWER_PASSWORD, name="Bob Viewer", roles=["Lockgate.Viewer"])
    loop = LoopThread()
    loop.serve(start(entra, 0, ctx))
    yield Tenant(entra, ca)
    loop.stop()


class _Form(HTMLParser):
    """The first form of a page: its action and every named input's value."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.ids: set[str] = set()
        self.labels_for: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        elif tag == "label" and "for" in a:
            self.labels_for.add(a["for"])
        elif tag == "input" and "name" in a:
            self.fields[a["name"]] = a.get("value", "")


def _form(html: str) -> _Form:
    parsed = _Form()
    parsed.feed(html)
    return parsed


def _submit(browser: requests.Session, page: requests.Response, **values: str) -> requests.Response:
    form = _form(page.text)
    assert form.action is not None
    return browser.post(
        urljoin(page.url, form.action), data={**form.fields, **values}, allow_redirects=False,
        timeout=10,
    )  # fmt: skip


def _auth_response(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    query = urlsplit(answer.headers["Location"]).query
    return {k: v[0] for k, v in parse_qs(query).items()}


def _sign_in(
    browser: requests.Session, auth_uri: str, username: str, password: str
) -> dict[str, str]:
    page = browser.get(auth_uri, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text
    return _auth_response(_submit(browser, page, login=username, passwd=password, action="signin"))


def _claims_checked_with_jwks(tenant: Tenant, id_token: str, audience: str) -> dict[str, Any]:
    """Verify the ID token the way a relying party does: discovery, then its JWKS."""
    doc = requests.get(
        f"{tenant.authority}/v2.0/.well-known/openid-configuration", verify=str(tenant.ca),
        timeout=10,
    ).json()  # fmt: skip
    keys = jwt.PyJWKSet.from_dict(
        requests.get(doc["jwks_uri"], verify=str(tenant.ca), timeout=10).json()
    )
    kid = jwt.get_unverified_header(id_token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        id_token, key.key, algorithms=["RS256"], audience=audience, issuer=doc["issuer"]
    )
    return claims


def test_msal_signs_a_person_in_with_code_and_pkce(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(
        ["User.Read"], redirect_uri=REDIRECT, response_mode="form_post"
    )
    asked = parse_qs(urlsplit(flow["auth_uri"]).query)
    assert asked["code_challenge_method"] == ["S256"]
    browser = tenant.browser()
    page = browser.get(flow["auth_uri"], timeout=10)
    posted = _form(_submit(browser, page, login=ADMIN, passwd=ADMIN_PASSWORD, action="signin").text)
    assert posted.action == REDIRECT  # the page posts the answer to the app
    result = app.acquire_token_by_auth_code_flow(flow, posted.fields)
    assert "error" not in result, result
    assert result["token_type"] == "Bearer" and result["access_token"]
    claims = _claims_checked_with_jwks(tenant, result["id_token"], CONSOLE)
    assert claims == result["id_token_claims"]
    user = tenant.entra.sign_in.users[ADMIN]
    assert claims["iss"] == f"{tenant.authority}/v2.0" and claims["ver"] == "2.0"
    assert claims["aud"] == CONSOLE and claims["tid"] == tenant.entra.tenant
    assert claims["oid"] == user.oid and claims["sub"] != user.oid
    assert claims["name"] == "Alice Admin" and claims["preferred_username"] == ADMIN
    assert claims["roles"] == ["Lockgate.Admin"]  # only the roles the app defines
    assert claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    # The access token is for Microsoft Graph (User.Read), issued by the tenant.
    access = tenant.entra.verify(result["access_token"], "https://graph.microsoft.com")
    assert access["oid"] == user.oid and access["scp"] == "User.Read"
    client_info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert client_info == {"uid": user.oid, "utid": tenant.entra.tenant}
    # MSAL keeps the signed-in account, keyed by the person's oid.
    assert app.get_accounts()[0]["username"] == ADMIN


def test_the_subject_is_pairwise_and_a_person_without_roles_has_no_roles_claim(
    tenant: Tenant,
) -> None:
    subjects = []
    for client_id, secret in ((CONSOLE, SECRET), (OTHER, "other-secret")):
        app = tenant.app(client_id, secret)
        flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
        result = app.acquire_token_by_auth_code_flow(
            flow, _sign_in(tenant.browser(), flow["auth_uri"], VIEWER, VIEWER_PASSWORD)
        )
        subjects.append(result["id_token_claims"]["sub"])
        if client_id == OTHER:  # defines no app roles: every role value the user holds
            assert result["id_token_claims"]["roles"] == ["Lockgate.Viewer"]
    assert subjects[0] != subjects[1]
    tenant.entra.add_user("carol@contoso.example", "carol-pw")
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    result = app.acquire_token_by_auth_code_flow(
        flow, _sign_in(tenant.browser(), flow["auth_uri"], "carol@contoso.example", "carol-pw")
    )
    assert "roles" not in result["id_token_claims"]


def test_the_sign_in_page_is_labelled_and_a_wrong_password_shows_it_again(
    tenant: Tenant,
) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT, login_hint=ADMIN)
    browser = tenant.browser()
    page = browser.get(flow["auth_uri"], timeout=10)
    form = _form(page.text)
    assert {"i0116", "i0118", "idSIButton9", "idBtn_Back"} <= form.ids
    assert {"i0116", "i0118"} <= form.labels_for
    assert form.fields["login"] == ADMIN  # the login hint, filled in
    wrong = _submit(browser, page, login=ADMIN, passwd="not-it", action="signin")
    assert wrong.status_code == 400 and "AADSTS50126" in wrong.text
    assert "not-it" not in wrong.text
    unknown = _submit(browser, wrong, login="nobody@contoso.example", passwd="x", action="signin")
    assert "AADSTS50126" in unknown.text  # the same answer: no account enumeration
    right = _submit(browser, unknown, login=ADMIN, passwd=ADMIN_PASSWORD, action="signin")
    result = app.acquire_token_by_auth_code_flow(flow, _auth_response(right))
    assert result["id_token_claims"]["preferred_username"] == ADMIN


def test_ten_wrong_passwords_lock_the_account(tenant: Tenant) -> None:
    tenant.entra.add_user("dave@contoso.example", "dave-pw")
    flow = tenant.app().initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    browser = tenant.browser()
    page = browser.get(flow["auth_uri"], timeout=10)
    for _ in range(10):
        page = _submit(browser, page, login="dave@contoso.example", passwd="no", action="signin")
    locked = _submit(browser, page, login="dave@contoso.example", passwd="dave-pw",
                     action="signin")  # fmt: skip
    assert locked.status_code == 400 and "AADSTS50053" in locked.text


def test_cancel_answers_access_denied_with_the_state(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    browser = tenant.browser()
    page = browser.get(flow["auth_uri"], timeout=10)
    answer = _auth_response(_submit(browser, page, action="cancel"))
    assert answer["error"] == "access_denied" and answer["state"] == flow["state"]
    assert answer["error_description"].startswith("AADSTS65004")
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert result["error"] == "access_denied"


def test_a_wrong_or_missing_code_verifier_is_invalid_grant(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    result = app.acquire_token_by_auth_code_flow(
        {**flow, "code_verifier": "A" * 43}, answer
    )  # fmt: skip
    assert result["error"] == "invalid_grant"
    assert result["error_description"].startswith("AADSTS501481")
    assert result["error_codes"] == [501481]

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    refused = _redeem(tenant, answer["code"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert "AADSTS501481" in refused.json()["error_description"]


def _redeem(tenant: Tenant, code: str, **form: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": CONSOLE,
        "client_secret": SECRET,
        "code": code,
        "redirect_uri": REDIRECT,
        "scope": "User.Read openid",
        **form,
    }
    return requests.post(tenant.entra.token_url, data={k: v for k, v in data.items() if v},
                         verify=str(tenant.ca), timeout=10)  # fmt: skip


def test_a_code_is_single_use(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, answer)
    again = app.acquire_token_by_auth_code_flow(flow, answer)
    assert again["error"] == "invalid_grant" and "AADSTS54005" in again["error_description"]
    recorded = tenant.entra.token_requests[-1].form
    assert recorded["code"] == recorded["code_verifier"] == "<redacted>"
    assert recorded["client_secret"] == "<redacted>"


def test_a_code_is_bound_to_its_client_and_redirect_uri(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    verifier = flow["code_verifier"]
    moved = _redeem(tenant, answer["code"], code_verifier=verifier,
                    redirect_uri="https://127.0.0.1:8443/other-callback")  # fmt: skip
    assert moved.json()["error"] == "invalid_grant"
    assert "AADSTS500112" in moved.json()["error_description"]

    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    stolen = _redeem(tenant, answer["code"], code_verifier=flow["code_verifier"],
                     client_id=OTHER, client_secret="other-secret")  # fmt: skip
    assert stolen.json()["error"] == "invalid_grant"
    assert "AADSTS70000" in stolen.json()["error_description"]


def test_a_confidential_client_must_present_its_secret(tenant: Tenant) -> None:
    flow = tenant.app().initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    wrong = tenant.app(secret="not-the-secret").acquire_token_by_auth_code_flow(flow, answer)
    assert wrong["error"] == "invalid_client" and "AADSTS7000215" in wrong["error_description"]
    # A refused client authentication does not use the code up (another client could
    # otherwise burn it); the right secret still redeems it.
    assert "id_token" in tenant.app().acquire_token_by_auth_code_flow(flow, answer)
    no_code = _redeem(tenant, "")
    assert no_code.status_code == 400 and "AADSTS900144" in no_code.json()["error_description"]
    missing = _redeem(tenant, "whatever", client_secret="")
    assert missing.status_code == 401 and "AADSTS7000218" in missing.json()["error_description"]
    basic = requests.post(
        tenant.entra.token_url, auth=(CONSOLE, "not-the-secret"),
        data={"grant_type": "authorization_code", "code": "x", "redirect_uri": REDIRECT},
        verify=str(tenant.ca), timeout=10,
    )  # fmt: skip
    assert basic.status_code == 401 and "AADSTS7000215" in basic.json()["error_description"]


def test_a_public_client_signs_in_without_a_secret_and_may_not_present_one(
    tenant: Tenant,
) -> None:
    app = tenant.public_app()
    redirect = "http://localhost:8400/callback"
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=redirect)
    result = app.acquire_token_by_auth_code_flow(
        flow, _sign_in(tenant.browser(), flow["auth_uri"], VIEWER, VIEWER_PASSWORD)
    )
    assert result["id_token_claims"]["aud"] == PUBLIC
    presented = _redeem(tenant, "x", client_id=PUBLIC, redirect_uri=redirect)
    assert presented.status_code == 401
    assert "AADSTS700025" in presented.json()["error_description"]


def test_an_unregistered_redirect_uri_or_client_gets_an_error_page_not_a_redirect(
    tenant: Tenant,
) -> None:
    app = tenant.app()
    evil = "https://evil.example/cb?x=<script>alert(1)</script>"
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=evil)
    page = tenant.browser().get(flow["auth_uri"], allow_redirects=False, timeout=10)
    assert page.status_code == 400 and "Location" not in page.headers
    assert "AADSTS50011" in page.text and "<script>" not in page.text
    flow = tenant.app("unknown-app").initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    page = tenant.browser().get(flow["auth_uri"], allow_redirects=False, timeout=10)
    assert page.status_code == 400 and "AADSTS700016" in page.text


def test_prompt_none_needs_a_signed_in_session(tenant: Tenant) -> None:
    app = tenant.app()
    browser = tenant.browser()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT, prompt="none")
    answer = _auth_response(browser.get(flow["auth_uri"], allow_redirects=False, timeout=10))
    assert answer["error"] == "login_required" and answer["state"] == flow["state"]
    assert answer["error_description"].startswith("AADSTS50058")
    assert app.acquire_token_by_auth_code_flow(flow, answer)["error"] == "login_required"

    signed_in = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    app.acquire_token_by_auth_code_flow(
        signed_in, _sign_in(browser, signed_in["auth_uri"], ADMIN, ADMIN_PASSWORD)
    )
    silent = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT, prompt="none")
    answer = _auth_response(browser.get(silent["auth_uri"], allow_redirects=False, timeout=10))
    result = app.acquire_token_by_auth_code_flow(silent, answer)
    assert result["id_token_claims"]["preferred_username"] == ADMIN
    # prompt=login asks again even with a session; signing out ends the session.
    again = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT, prompt="login")
    assert browser.get(again["auth_uri"], allow_redirects=False, timeout=10).status_code == 200
    out = browser.get(
        f"{tenant.authority}/oauth2/v2.0/logout",
        params={"post_logout_redirect_uri": REDIRECT}, allow_redirects=False, timeout=10,
    )  # fmt: skip
    assert out.status_code == 302 and out.headers["Location"] == REDIRECT
    after = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT, prompt="none")
    answer = _auth_response(browser.get(after["auth_uri"], allow_redirects=False, timeout=10))
    assert answer["error"] == "login_required"


def _authorize(tenant: Tenant, **params: str) -> requests.Response:
    query = {"client_id": CONSOLE, "redirect_uri": REDIRECT, "response_type": "code",
             "scope": "openid profile", "state": "s1", "nonce": "n1",
             "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
             "code_challenge_method": "S256", **params}  # fmt: skip
    return tenant.browser().get(
        f"{tenant.authority}/oauth2/v2.0/authorize",
        params={k: v for k, v in query.items() if v}, allow_redirects=False, timeout=10,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("params", "error", "code"),
    [
        ({"code_challenge": "", "code_challenge_method": ""}, "invalid_request", "AADSTS9002325"),
        ({"code_challenge": "short"}, "invalid_request", "AADSTS501491"),
        ({"code_challenge_method": "S512"}, "invalid_request", "AADSTS501491"),
        ({"response_type": "token"}, "unsupported_response_type", "AADSTS70005"),
        ({"scope": ""}, "invalid_request", "AADSTS900144"),
        ({"scope": "openid api://a/x api://b/y"}, "invalid_scope", "AADSTS28000"),
    ],
)
def test_authorize_faults_go_back_to_the_app_with_the_state(
    tenant: Tenant, params: dict[str, str], error: str, code: str
) -> None:
    answer = _auth_response(_authorize(tenant, **params))
    assert answer["error"] == error and answer["error_description"].startswith(code)
    assert answer["state"] == "s1"


def test_plain_pkce_form_post_and_an_id_token_only_with_openid(tenant: Tenant) -> None:
    verifier = "v" * 43
    browser = tenant.browser()
    page = browser.get(
        _authorize(tenant, code_challenge=verifier, code_challenge_method="plain",
                   response_mode="form_post", scope="profile").url,
        timeout=10,
    )  # fmt: skip
    posted = _submit(browser, page, login=ADMIN, passwd=ADMIN_PASSWORD, action="signin")
    form = _form(posted.text)
    assert posted.status_code == 200 and form.action == REDIRECT
    assert form.fields["state"] == "s1" and "session_state" in form.fields
    answer = _redeem(tenant, form.fields["code"], code_verifier=verifier, scope="profile")
    assert answer.status_code == 200, answer.text
    assert "id_token" not in answer.json()  # no openid scope: OAuth only, as the service does


def test_discovery_names_the_sign_in_endpoints(tenant: Tenant) -> None:
    doc = requests.get(
        f"{tenant.authority}/v2.0/.well-known/openid-configuration", verify=str(tenant.ca),
        timeout=10,
    ).json()  # fmt: skip
    assert doc["authorization_endpoint"] == f"{tenant.authority}/oauth2/v2.0/authorize"
    assert doc["end_session_endpoint"] == f"{tenant.authority}/oauth2/v2.0/logout"
    assert doc["issuer"] == f"{tenant.authority}/v2.0"
    assert "code_challenge_methods_supported" not in doc  # the service does not list it


def test_an_expired_code_or_sign_in_page_is_refused(tenant: Tenant) -> None:
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    answer = _sign_in(tenant.browser(), flow["auth_uri"], ADMIN, ADMIN_PASSWORD)
    tenant.entra.sign_in.codes[answer["code"]].expires = 0  # ten minutes have passed
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert result["error"] == "invalid_grant" and "AADSTS70008" in result["error_description"]

    browser = tenant.browser()
    page = browser.get(app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
                       ["auth_uri"], timeout=10)  # fmt: skip
    stale = _submit(browser, page, ctx="not-a-pending-sign-in", login=ADMIN,
                    passwd=ADMIN_PASSWORD, action="signin")  # fmt: skip
    assert stale.status_code == 400 and "AADSTS50089" in stale.text


def test_client_secret_basic_fragment_answer_max_age_and_email(tenant: Tenant) -> None:
    verifier = "b" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    page = _authorize(
        tenant, code_challenge=challenge.rstrip(b"=").decode(), response_mode="fragment",
        scope="openid profile email", max_age="600",
    )  # fmt: skip
    browser = tenant.browser()
    answer = _submit(browser, page, login=VIEWER, passwd=VIEWER_PASSWORD, action="signin")
    location = urlsplit(answer.headers["Location"])
    assert location.query == ""  # the answer is in the fragment only
    code = parse_qs(location.fragment)["code"][0]
    tokens = requests.post(
        tenant.entra.token_url, auth=(CONSOLE, SECRET),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
              "code_verifier": verifier},
        verify=str(tenant.ca), timeout=10,
    )  # fmt: skip
    assert tokens.status_code == 200, tokens.text
    claims = _claims_checked_with_jwks(tenant, tokens.json()["id_token"], CONSOLE)
    assert claims["email"] == VIEWER and claims["nonce"] == "n1"
    assert abs(claims["auth_time"] - claims["iat"]) <= 2
    assert tokens.json()["scope"] == "openid profile email https://graph.microsoft.com/User.Read"


def test_msal_refreshes_silently_for_another_resource_until_sessions_are_revoked(
    tenant: Tenant,
) -> None:
    user, password = "erin@contoso.example", "erin-pw"
    tenant.entra.add_user(user, password, roles=["Lockgate.Operator"])
    app = tenant.app()
    flow = app.initiate_auth_code_flow(["User.Read"], redirect_uri=REDIRECT)
    signed_in = app.acquire_token_by_auth_code_flow(
        flow, _sign_in(tenant.browser(), flow["auth_uri"], user, password)
    )
    assert signed_in["refresh_token"]  # MSAL asks offline_access
    account = app.get_accounts(username=user)[0]
    again = app.acquire_token_silent_with_error(["User.Read"], account, force_refresh=True)
    assert again is not None and "access_token" in again, again
    assert again["access_token"] != signed_in["access_token"]
    refreshed = again["id_token_claims"]
    assert "nonce" not in refreshed and refreshed["roles"] == ["Lockgate.Operator"]
    assert refreshed["sub"] == signed_in["id_token_claims"]["sub"]
    orders = app.acquire_token_silent_with_error(["api://orders/Orders.Read"], account)
    assert orders is not None and "access_token" in orders, orders
    assert tenant.entra.verify(orders["access_token"], "api://orders")["scp"] == "Orders.Read"
    assert tenant.entra.token_requests[-1].form["refresh_token"] == "<redacted>"

    stolen = requests.post(
        tenant.entra.token_url,
        data={"grant_type": "refresh_token", "client_id": OTHER, "client_secret": "other-secret",
              "refresh_token": signed_in["refresh_token"], "scope": "User.Read"},
        verify=str(tenant.ca), timeout=10,
    )  # fmt: skip
    assert stolen.status_code == 400 and "AADSTS70000" in stolen.json()["error_description"]

    assert tenant.entra.revoke_sign_in_sessions(user) >= 1
    revoked = app.acquire_token_silent_with_error(["User.Read"], account, force_refresh=True)
    assert revoked is not None and revoked["error"] == "invalid_grant"
    assert "AADSTS50173" in revoked["error_description"]
