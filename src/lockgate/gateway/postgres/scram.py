"""The password exchanges of the gateway's upstream login, sans-I/O: SCRAM-SHA-256 and md5.

:class:`ScramClient` is the client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as
PostgreSQL speaks it: channel binding to the server's TLS certificate (SCRAM-SHA-256-PLUS,
``tls-server-end-point``) when the server offers it over TLS, an empty user name in the
client-first message (the server takes the user from the startup packet), the password
normalised with SASLprep (RFC 4013) exactly where PostgreSQL normalises it — a pure-ASCII
password as is, and the raw bytes whenever SASLprep refuses the string — and the server's
signature checked before the login counts: a server that cannot prove it knows the verifier
is refused (:class:`ScramError`). Bytes in, bytes out; :mod:`.upstream` does the I/O.

The salted password (PBKDF2, thousands of HMAC rounds) is remembered per (password, salt,
iterations) in a small bounded table, keyed by a digest of the password so no extra copy of
the secret is kept; every login after the first to a server then costs a few HMACs.

:func:`md5_password` is PostgreSQL's legacy ``md5`` answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import threading
import unicodedata
from collections import OrderedDict

MECHANISM = "SCRAM-SHA-256"
#: With channel binding to the server's TLS certificate (RFC 5929 tls-server-end-point).
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
#: gs2 headers: "n" no channel binding (no TLS, or a certificate that cannot be bound);
#: "y" the client could bind but the server offered no -PLUS (a server that does offer it
#: then fails the login: someone removed it from the list); "p" bound to the certificate.
GS2_NO_BINDING = b"n,,"
GS2_BINDING_UNOFFERED = b"y,,"
GS2_BINDING = b"p=tls-server-end-point,,"
#: Bytes of randomness in the client nonce (libpq uses 18 too).
NONCE_BYTES = 18
#: A server asking for more PBKDF2 rounds than this is refused: each login would otherwise
#: burn seconds of gateway CPU on a number only the server chose (PostgreSQL's default: 4096).
MAX_ITERATIONS = 1_000_000
#: Salted passwords remembered (one per credential version and server salt).
SALTED_CACHE_SIZE = 128


class ScramError(Exception):
    """The server's side of the exchange is malformed or fails its proof."""


# -- SASLprep -----------------------------------------------------------------------------
def saslprep(password: str) -> bytes:
    """The password as PostgreSQL's ``pg_saslprep`` prepares it, as UTF-8 bytes.

    Pure ASCII passes unchanged; otherwise RFC 4013 (map, NFKC, prohibit, bidi check). When
    the string breaks a rule, PostgreSQL uses the raw bytes instead, and so does this.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    prepared = _rfc4013(password)
    return raw if prepared is None else prepared.encode("utf-8")


def _rfc4013(text: str) -> str | None:
    # 1. map: non-ASCII spaces to SPACE, "commonly mapped to nothing" removed
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # 2. normalise
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal:
        return None
    # 3. prohibited output, 5. unassigned code points (stored strings)
    for c in normal:
        if (
            stringprep.in_table_c12(c)
            or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c)
            or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c)
            or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c)
            or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c)
            or stringprep.in_table_a1(c)
        ):
            return None
    # 4. bidirectional text: RandAL text has no L and begins and ends with RandAL
    if any(stringprep.in_table_d1(c) for c in normal):
        if any(stringprep.in_table_d2(c) for c in normal):
            return None
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            return None
    return normal


# -- salted password cache ----------------------------------------------------------------
_salted: OrderedDict[tuple[bytes, bytes, int], bytes] = OrderedDict()
_salted_lock = threading.Lock()  # filled from a worker thread by :mod:`.upstream`


def _salted_key(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, int]:
    return hashlib.sha256(password.encode("utf-8")).digest(), salt, iterations


def cached_salted_password(password: str, salt: bytes, iterations: int) -> bytes | None:
    """The salted password if already computed, else None (never computes)."""
    with _salted_lock:
        return _salted.get(_salted_key(password, salt, iterations))


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """``Hi(SASLprep(password), salt, iterations)``, remembered in a bounded table."""
    key = _salted_key(password, salt, iterations)
    with _salted_lock:
        hit = _salted.get(key)
        if hit is not None:
            _salted.move_to_end(key)
            return hit
    value = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    with _salted_lock:
        _salted[key] = value
        while len(_salted) > SALTED_CACHE_SIZE:
            _salted.popitem(last=False)
    return value


def forget_salted_passwords() -> None:
    """Empty the table (tests; after a credential is deleted)."""
    with _salted_lock:
        _salted.clear()


# -- the exchange ---------------------------------------------------------------------------
def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _attributes(message: bytes, expected: str) -> list[tuple[str, str]]:
    """Split ``a=v,b=w`` and check the leading attribute names are ``expected`` in order."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("server message is not UTF-8") from None
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        name, eq, value = part.partition("=")
        if len(name) != 1 or not eq:
            raise ScramError(f"malformed server message attribute {part[:20]!r}")
        pairs.append((name, value))
    names = "".join(n for n, _ in pairs)
    if not names.startswith(expected):
        if names.startswith("e"):
            raise ScramError(f"server reports error: {pairs[0][1][:200]}")
        raise ScramError(f"server message has attributes {names!r}, expected {expected!r}")
    return pairs


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScramError(f"server {what} is not base64") from None


def tls_server_end_point(certificate_der: bytes) -> bytes | None:
    """The channel-binding data of a server certificate (RFC 5929 §4.1): its hash with the
    hash of its signature, SHA-256 in place of MD5 or SHA-1; None when the signature has no
    separate hash (Ed25519 ...), so nothing can be bound."""
    from cryptography import x509  # only for TLS logins
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        algorithm = x509.load_der_x509_certificate(certificate_der).signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        return None
    if algorithm is None:
        return None
    name = "sha256" if algorithm.name in ("md5", "sha1") else algorithm.name
    try:
        return hashlib.new(name, certificate_der).digest()
    except ValueError:
        return None


def choose_mechanism(offered: list[str], binding: bytes | None) -> tuple[str, bytes | None]:
    """The mechanism to use from the server's list and the binding data to use with it.

    Channel binding when both sides can (as libpq's default ``channel_binding=prefer``);
    raises :class:`ScramError` when neither mechanism is offered.
    """
    if binding is not None and MECHANISM_PLUS in offered:
        return MECHANISM_PLUS, binding
    if MECHANISM in offered:
        return MECHANISM, None
    raise ScramError(f"the server offers SASL mechanisms {offered}, none supported")


class ScramClient:
    """One SCRAM-SHA-256 exchange, client side.

    ``client_first()`` → send; ``server_first(data)`` with the server's SASLContinue data →
    ``(salt, iterations)`` so the caller may compute :func:`salted_password` off the event
    loop; ``client_final()`` → send; ``server_final(data)`` with the SASLFinal data checks
    the server's signature (raises :class:`ScramError`); then :attr:`done` is true.

    ``channel_binding``: the TLS certificate's binding data, for SCRAM-SHA-256-PLUS;
    ``could_bind``: over TLS without it (the server offered only SCRAM-SHA-256), so a
    server that does support -PLUS detects that it was removed from its list.
    """

    def __init__(
        self,
        password: str,
        *,
        nonce: str | None = None,
        username: str = "",
        channel_binding: bytes | None = None,
        could_bind: bool = False,
    ) -> None:
        self._password = password
        if channel_binding is not None:
            self._gs2 = GS2_BINDING
            self._cbind_input = GS2_BINDING + channel_binding
        else:
            self._gs2 = GS2_BINDING_UNOFFERED if could_bind else GS2_NO_BINDING
            self._cbind_input = self._gs2
        self.mechanism = MECHANISM if channel_binding is None else MECHANISM_PLUS
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode()
        # "=" and "," are escaped in the saslname (RFC 5802 §5.1); PostgreSQL sends it empty.
        name = username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={name},r={self._nonce}".encode()
        self._server_first = b""
        self._server_nonce = ""
        self._salt = b""
        self._iterations = 0
        self._auth_message = b""
        self._server_signature = b""
        self.done = False

    def __repr__(self) -> str:  # never the password
        return f"ScramClient({self.mechanism}, done={self.done})"

    def client_first(self) -> bytes:
        return self._gs2 + self._client_first_bare

    def server_first(self, data: bytes) -> tuple[bytes, int]:
        if self._server_first:
            raise ScramError("second server-first message")
        pairs = _attributes(data, "rsi")
        nonce, salt_b64, iterations = pairs[0][1], pairs[1][1], pairs[2][1]
        if any(n == "m" for n, _ in pairs):
            raise ScramError("server requires an unsupported extension")
        # The server's nonce must extend ours: else it answers some other exchange.
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("server nonce does not extend the client nonce")
        if not iterations.isdigit() or not 1 <= int(iterations) <= MAX_ITERATIONS:
            raise ScramError(f"server iteration count {iterations[:12]!r} is out of range")
        self._salt = _b64decode(salt_b64, "salt")
        if not self._salt:
            raise ScramError("server salt is empty")
        self._server_first = bytes(data)
        self._server_nonce = nonce
        self._iterations = int(iterations)
        return self._salt, self._iterations

    def client_final(self) -> bytes:
        if not self._server_first:
            raise ScramError("client-final before server-first")
        salted = salted_password(self._password, self._salt, self._iterations)
        without_proof = (
            b"c=" + base64.b64encode(self._cbind_input) + b",r=" + self._server_nonce.encode()
        )
        self._auth_message = (
            self._client_first_bare + b"," + self._server_first + b"," + without_proof
        )
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), self._auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def server_final(self, data: bytes) -> None:
        if not self._auth_message:
            raise ScramError("server-final before client-final")
        pairs = _attributes(data, "v")
        signature = _b64decode(pairs[0][1], "signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("server signature does not match: it does not know the verifier")
        self.done = True


def md5_password(password: str, user: str, salt: bytes) -> str:
    """PostgreSQL's md5 answer: ``"md5" + md5(md5(password + user) + salt)`` in hex."""
    # The server's legacy scheme, not a choice of ours: a server asks for it or it doesn't.
    inner = hashlib.md5(password.encode("utf-8") + user.encode("utf-8")).hexdigest()  # noqa: S324
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()  # noqa: S324
