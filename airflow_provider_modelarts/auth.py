"""Huawei Cloud request authentication: the APIG ``SDK-HMAC-SHA256`` AK/SK signer and the IAM token source.

The signing and token functions are pure: they know nothing about Airflow or any HTTP library. Only
:class:`IamTokenAuth` at the end speaks to ``requests`` and ``httpx``, as the auth object both libraries
call for every request. The signer reproduces
``huaweicloudsdkcore.signer.Signer`` byte for byte, quirks included (see ``modelarts-api.md`` section 2b):

* the canonical URI always ends in ``/`` and is built by unquoting the path, splitting on ``/`` and
  re-quoting every segment;
* the query is sorted and re-encoded, and that canonical query is also the one sent;
* every header present at signing time is signed (names containing ``_`` excepted);
* ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` is added for non-JSON/BSON content types;
* an empty body always hashes to the SHA-256 of the empty string;
* ``X-Project-Id`` and ``X-Security-Token`` are added before signing, ``Host`` keeps a non-default port.

Why not ``huaweicloudsdkcore``: the ModelArts SDK has no method for ``.../logs/url`` (the call this
provider exists for), so its signer would have to be driven by hand anyway, and ``huaweicloudsdkcore``
pulls in a heavy dependency tree of its own (``pymongo`` with ``dnspython``, ``PyYAML``, ``simplejson``,
``six``, ``pyasn1``, ``defusedxml``, ``requests-toolbelt``) for a signer that fits in this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import httpx
import requests

__all__ = [
    "ALGORITHM",
    "DEFAULT_REFRESH_LEAD",
    "HEADER_AUTHORIZATION",
    "HEADER_AUTH_TOKEN",
    "HEADER_CONTENT_SHA256",
    "HEADER_DATE",
    "HEADER_PROJECT_ID",
    "HEADER_SECURITY_TOKEN",
    "HEADER_SUBJECT_TOKEN",
    "IAM_TOKEN_PATH",
    "SDK_DATE_FORMAT",
    "TOKEN_CACHE",
    "UNSIGNED_PAYLOAD",
    "AkSkSigner",
    "IamToken",
    "IamTokenAuth",
    "QueryParams",
    "SignedRequest",
    "TokenCache",
    "TokenKey",
    "TokenRequest",
    "TokenResponseError",
    "build_token_request",
    "canonical_headers",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "parse_iso_datetime",
    "parse_token_response",
    "payload_hash",
    "sdk_quote",
    "signature",
    "signed_header_names",
    "string_to_sign",
]

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
HEADER_DATE = "X-Sdk-Date"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_PROJECT_ID = "X-Project-Id"
HEADER_SECURITY_TOKEN = "X-Security-Token"
HEADER_AUTHORIZATION = "Authorization"
HEADER_AUTH_TOKEN = "X-Auth-Token"
HEADER_SUBJECT_TOKEN = "X-Subject-Token"

QueryParams = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def sdk_quote(value: str) -> str:
    """URL-encode like the SDK: only ``A-Z a-z 0-9 - _ . ~`` stay as they are, ``%XX`` upper case.

    :param value: the text to encode.
    """
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    """Canonical URI of a request path: unquote, split on ``/``, quote each segment, always end in ``/``.

    :param path: the request path as sent (may contain percent-escapes).
    """
    uri = "/".join(sdk_quote(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def _query_pairs(params: QueryParams) -> list[tuple[str, Any]]:
    if not params:
        return []
    if isinstance(params, Mapping):
        return list(params.items())
    return list(params)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_query(params: QueryParams) -> str:
    """Canonical query string: pairs sorted, keys and values SDK-quoted; list values sorted, one pair each.

    :param params: a mapping or a sequence of ``(key, value)`` pairs; ``None`` or empty gives ``""``.
    """
    parts: list[str] = []
    for key, value in sorted(_query_pairs(params), key=lambda kv: (kv[0], _query_value(kv[1]))):
        k = sdk_quote(key)
        if isinstance(value, list | tuple):
            parts.extend(f"{k}={sdk_quote(_query_value(v))}" for v in sorted(value, key=_query_value))
        else:
            parts.append(f"{k}={sdk_quote(_query_value(value))}")
    return "&".join(parts)


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased, sorted names of the headers that get signed (every one without ``_`` in its name).

    :param headers: the request headers present at signing time.
    """
    return sorted(name.lower() for name in headers if "_" not in name)


def canonical_headers(headers: Mapping[str, str], signed: Iterable[str]) -> str:
    """``name:value\\n`` for every signed header, values stripped.

    :param headers: the request headers.
    :param signed: lower-cased names of the headers to include, in order.
    """
    lowered = {name.lower(): str(value).strip() for name, value in headers.items()}
    return "".join(f"{name}:{lowered[name]}\n" for name in signed)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def payload_hash(body: bytes | str | None, headers: Mapping[str, str]) -> str:
    """Hash line of the canonical request.

    An empty body always hashes to :data:`EMPTY_SHA256`; otherwise an ``X-Sdk-Content-Sha256`` header wins;
    otherwise the SHA-256 of the body bytes.

    :param body: the request body.
    :param headers: the request headers.
    """
    if not body:
        return EMPTY_SHA256
    declared = _header(headers, HEADER_CONTENT_SHA256)
    if declared:
        return declared
    data = body.encode("utf-8") if isinstance(body, str) else body
    return hashlib.sha256(data).hexdigest()


def canonical_request(
    method: str,
    path: str,
    params: QueryParams,
    headers: Mapping[str, str],
    body: bytes | str | None,
) -> str:
    """The canonical request the signature covers.

    :param method: HTTP method.
    :param path: the request path (without query).
    :param params: query parameters.
    :param headers: all headers present at signing time (``Host`` and ``X-Sdk-Date`` included).
    :param body: request body.
    """
    signed = signed_header_names(headers)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(params),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash(body, headers),
        ]
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """``SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256 of the canonical request>``.

    :param canonical: the canonical request.
    :param sdk_date: the ``X-Sdk-Date`` value.
    """
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(secret_key: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the SK.

    :param secret_key: the secret key (SK).
    :param to_sign: the string to sign.
    """
    return hmac.new(secret_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _wire_header_value(value: str) -> str:
    return value.encode("utf-8").decode("iso-8859-1")


@dataclass(frozen=True)
class SignedRequest:
    """A request ready to send: ``url`` carries the canonical query, ``headers`` include ``Authorization``."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class AkSkSigner:
    """Signs requests with an AK/SK pair (``SDK-HMAC-SHA256``), like ``huaweicloudsdkcore`` ``BasicCredentials``.

    :param access_key: the access key (AK).
    :param secret_key: the secret key (SK).
    :param project_id: added as ``X-Project-Id`` when given.
    :param security_token: temporary-credential token, added (and signed) as ``X-Security-Token``.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        project_id: str | None = None,
        security_token: str | None = None,
    ) -> None:
        if not access_key:
            raise ValueError("access_key is required")
        if not secret_key:
            raise ValueError("secret_key is required")
        self.access_key = access_key
        self._secret_key = secret_key
        self.project_id = project_id
        self._security_token = security_token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(access_key={self.access_key!r}, project_id={self.project_id!r})"

    def sign(
        self,
        method: str,
        url: str,
        *,
        params: QueryParams = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        sdk_date: str | None = None,
    ) -> SignedRequest:
        """Sign a request.

        :param method: HTTP method.
        :param url: absolute URL; a query already in it is merged with ``params``.
        :param params: query parameters.
        :param headers: headers to send (all of them get signed), e.g. ``Content-Type``, ``User-Agent``.
        :param body: request body (``str`` is encoded as UTF-8).
        :param sdk_date: ``X-Sdk-Date`` to use (``YYYYMMDDTHHMMSSZ``); default now (UTC). A date
            already in ``headers`` is reused.
        """
        parts = urlsplit(url)
        pairs = _query_pairs(params)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True) + pairs
        data = body.encode("utf-8") if isinstance(body, str) else body

        out: dict[str, str] = dict(headers or {})
        if self.project_id and _header(out, HEADER_PROJECT_ID) is None:
            out[HEADER_PROJECT_ID] = self.project_id
        if self._security_token and _header(out, HEADER_SECURITY_TOKEN) is None:
            out[HEADER_SECURITY_TOKEN] = self._security_token
        content_type = _header(out, "Content-Type")
        if content_type and not content_type.startswith(("application/json", "application/bson")):
            out[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
        date = _header(out, HEADER_DATE)
        if date is None:
            date = sdk_date or time.strftime(SDK_DATE_FORMAT, time.gmtime())
            out[HEADER_DATE] = date
        if _header(out, "Host") is None:
            out["Host"] = parts.netloc
        out = {name: str(value).strip() for name, value in out.items()}

        signed = signed_header_names(out)
        canonical = "\n".join(
            [
                method.upper(),
                canonical_uri(parts.path or "/"),
                canonical_query(pairs),
                canonical_headers(out, signed),
                ";".join(signed),
                payload_hash(data, out),
            ]
        )
        sig = signature(self._secret_key, string_to_sign(canonical, date))
        out[HEADER_AUTHORIZATION] = (
            f"{ALGORITHM} Access={self.access_key}, SignedHeaders={';'.join(signed)}, Signature={sig}"
        )
        # Like the SDK: the text is signed, the wire carries its UTF-8 bytes read as latin-1.
        wire = {name: _wire_header_value(value) for name, value in out.items()}
        sent_url = urlunsplit((parts.scheme, parts.netloc, parts.path, canonical_query(pairs), ""))
        return SignedRequest(method=method.upper(), url=sent_url, headers=wire, body=data)


# --------------------------------------------------------------------------------------------------
# IAM token (password method, project scope by id)
# --------------------------------------------------------------------------------------------------

IAM_TOKEN_PATH = "/v3/auth/tokens"
DEFAULT_REFRESH_LEAD = timedelta(minutes=10)


class TokenResponseError(ValueError):
    """The IAM answer has no ``X-Subject-Token`` header or no parseable ``token.expires_at``."""


@dataclass(frozen=True)
class IamToken:
    """An IAM token with its expiry (UTC, tz-aware)."""

    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"IamToken(token='***', expires_at={self.expires_at.isoformat()})"

    def fresh(self, *, lead: timedelta = DEFAULT_REFRESH_LEAD, now: datetime | None = None) -> bool:
        """Whether the token stays valid for at least ``lead`` from ``now``."""
        return (now or datetime.now(timezone.utc)) + lead < self.expires_at


@dataclass(frozen=True)
class TokenRequest:
    """The IAM ``POST /v3/auth/tokens`` request for the password method, scoped to a project by id."""

    url: str
    headers: dict[str, str]
    body: bytes


def build_token_request(
    iam_endpoint: str, *, domain_name: str, user_name: str, password: str, project_id: str
) -> TokenRequest:
    """Build the password-method token request, scoped to the project by id.

    :param iam_endpoint: ``scheme://host[:port]`` of IAM.
    :param domain_name: account (domain) name.
    :param user_name: IAM user name.
    :param password: IAM user password.
    :param project_id: project the token is scoped to.
    """
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user_name, "password": password, "domain": {"name": domain_name}}
                },
            },
            "scope": {"project": {"id": project_id}},
        }
    }
    return TokenRequest(
        url=f"{iam_endpoint.rstrip('/')}{IAM_TOKEN_PATH}?nocatalog=true",
        headers={"Content-Type": "application/json;charset=utf8"},
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
    )


def parse_iso_datetime(value: str) -> datetime:
    """Parse IAM's ``2019-02-13T06:52:13.855000Z`` (any ISO 8601 form) into a tz-aware UTC datetime.

    :param value: the timestamp text.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_token_response(headers: Mapping[str, str], body: bytes | str) -> IamToken:
    """Read the token from ``X-Subject-Token`` and its expiry from ``token.expires_at`` of the body.

    :param headers: response headers (names matched case-insensitively).
    :param body: response body.
    :raises TokenResponseError: either part is missing or malformed.
    """
    token = _header(headers, HEADER_SUBJECT_TOKEN)
    if not token:
        raise TokenResponseError("IAM answered without an X-Subject-Token header")
    try:
        payload = json.loads(body)
        expires = payload["token"]["expires_at"]
        expires_at = parse_iso_datetime(expires)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise TokenResponseError("IAM answered without a parseable token.expires_at") from err
    return IamToken(token=token, expires_at=expires_at)


TokenKey = tuple[str, str, str, str, str]
"""``(iam endpoint, domain, user, project, SHA-256 of the password)``."""


class TokenCache:
    """Process-wide, thread-safe cache of IAM tokens keyed by ``(iam endpoint, domain, user, project, password hash)``.

    A token is reused until ``lead`` before its expiry. :meth:`get` fetches at most once per key at a time:
    concurrent callers wait for the one fetch. :meth:`invalidate` drops a token the server refused, but only
    if it is still the cached one, so a refusal of an old token does not throw away a fresh one.

    :param lead: how long before expiry a token counts as stale.
    """

    def __init__(self, *, lead: timedelta = DEFAULT_REFRESH_LEAD) -> None:
        self.lead = lead
        self._tokens: dict[TokenKey, IamToken] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[TokenKey, threading.Lock] = {}

    def _key_lock(self, key: TokenKey) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def peek(self, key: TokenKey, *, now: datetime | None = None) -> IamToken | None:
        """The cached token if it is still fresh, else ``None``."""
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and cached.fresh(lead=self.lead, now=now):
            return cached
        return None

    def store(self, key: TokenKey, token: IamToken) -> None:
        """Cache a token fetched elsewhere (e.g. by an async client)."""
        with self._lock:
            self._tokens[key] = token

    def get(self, key: TokenKey, fetch: Callable[[], IamToken]) -> IamToken:
        """Return a fresh token for ``key``, calling ``fetch`` only when none is cached.

        :param key: cache key.
        :param fetch: obtains a new token (performs the IAM call).
        """
        cached = self.peek(key)
        if cached is not None:
            return cached
        with self._key_lock(key):
            cached = self.peek(key)
            if cached is not None:
                return cached
            token = fetch()
            self.store(key, token)
            return token

    def invalidate(self, key: TokenKey, token: str | None = None) -> None:
        """Forget the cached token for ``key`` (only if it is ``token``, when given).

        :param key: cache key.
        :param token: the token value the server refused.
        """
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (token is None or cached.token == token):
                del self._tokens[key]

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._tokens.clear()


TOKEN_CACHE = TokenCache()
"""The process-wide cache every hook instance shares."""


# --------------------------------------------------------------------------------------------------
# IAM token as an auth object of requests and httpx
# --------------------------------------------------------------------------------------------------

_auth_log = logging.getLogger(__name__)


class IamTokenAuth(requests.auth.AuthBase, httpx.Auth):
    """Adds the cached IAM token as ``X-Auth-Token``; on a 401 gets a new token and resends once.

    One object serves ``requests`` (``auth=`` of ``Session.request``) and ``httpx`` (``auth=`` of
    ``AsyncClient.request``). The token comes from :data:`TOKEN_CACHE`; ``fetch`` (sync) or ``afetch``
    (async) asks IAM for a new one when none is fresh. A 401 drops the refused token from the cache
    (only if it is still the cached one) before the single resend.

    :param key: the token's cache key (:attr:`ModelArtsConnectionConfig.token_key`).
    :param fetch: obtains a new token, blocking (the sync hook).
    :param afetch: obtains a new token without blocking the event loop (the async hook).
    :param cache: the token cache.
    """

    def __init__(
        self,
        key: TokenKey,
        *,
        fetch: Callable[[], IamToken] | None = None,
        afetch: Callable[[], Awaitable[IamToken]] | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        self.key = key
        self._fetch = fetch
        self._afetch = afetch
        self._cache = cache or TOKEN_CACHE
        self._alock: asyncio.Lock | None = None

    def _refused(self, status: int, token: str) -> bool:
        if status != 401:
            return False
        _auth_log.info("ModelArts refused the cached IAM token; getting a new one and retrying once.")
        self._cache.invalidate(self.key, token)
        return True

    def token(self) -> str:
        """A fresh token, fetched (once for all threads) when none is cached."""
        if self._fetch is None:
            raise RuntimeError("IamTokenAuth needs fetch= to be used with requests or a sync httpx client")
        return self._cache.get(self.key, self._fetch).token

    async def atoken(self) -> str:
        """A fresh token, fetched (once for all tasks of this object) without blocking the event loop."""
        cached = self._cache.peek(self.key)
        if cached is not None:
            return cached.token
        if self._afetch is None:
            raise RuntimeError("IamTokenAuth needs afetch= to be used with an async httpx client")
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            cached = self._cache.peek(self.key)
            if cached is None:
                cached = await self._afetch()
                self._cache.store(self.key, cached)
            return cached.token

    # -- requests -------------------------------------------------------------------------------

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers[HEADER_AUTH_TOKEN] = self.token()
        r.register_hook("response", self._resend_on_401)
        return r

    def _resend_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        sent = response.request
        if not self._refused(response.status_code, str(sent.headers.get(HEADER_AUTH_TOKEN, ""))):
            return response
        response.close()
        again = sent.copy()
        again.headers[HEADER_AUTH_TOKEN] = self.token()
        again.hooks = {"response": []}
        resent = response.connection.send(again, **kwargs)
        resent.history.append(response)
        resent.request = again
        return resent

    # -- httpx ----------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers[HEADER_AUTH_TOKEN] = token
        response = yield request
        if self._refused(response.status_code, token):
            request.headers[HEADER_AUTH_TOKEN] = self.token()
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.atoken()
        request.headers[HEADER_AUTH_TOKEN] = token
        response = yield request
        if self._refused(response.status_code, token):
            request.headers[HEADER_AUTH_TOKEN] = await self.atoken()
            yield request
