"""Server-side signature checks of the emulator: APIG ``SDK-HMAC-SHA256`` and OBS V2 query signatures.

This is an independent implementation of the APIG and OBS canonicalisation; it deliberately shares no
code with the provider's client-side signer, so that a mistake on one side shows up as a failed check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote

SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW_SECONDS = 15 * 60
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

__all__ = [
    "EMPTY_SHA256",
    "MAX_CLOCK_SKEW_SECONDS",
    "SDK_DATE_FORMAT",
    "SignatureError",
    "VerifiedRequest",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "obs_signature",
    "obs_string_to_sign",
    "parse_raw_query",
    "sdk_signature",
    "string_to_sign",
    "verify_sdk_hmac",
]

_AUTH_RE = re.compile(
    r"^SDK-HMAC-SHA256\s+(?:Access=([^,\s]+)|Credential=([^/,\s]+)(?:/[^,]*)?)\s*,\s*"
    r"SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-fA-F]+)\s*$"
)


class SignatureError(Exception):
    """A request's signature could not be verified; the message says why (safe to return to clients)."""


@dataclass(frozen=True)
class VerifiedRequest:
    """The result of a successful AK/SK verification.

    :param access_key: the AK that signed the request.
    :param security_token: the ``X-Security-Token`` sent with temporary credentials, if any.
    """

    access_key: str
    security_token: str | None


def _quote(value: str) -> str:
    return quote(value, safe="~")


def canonical_uri(raw_path: str) -> str:
    """Canonical URI of a received raw path: unquote, split on ``/``, quote each segment, trailing ``/``.

    :param raw_path: the path exactly as received (percent-encoded, without the query).
    """
    uri = "/".join(_quote(segment) for segment in unquote(raw_path).split("/"))
    if not uri.endswith("/"):
        uri += "/"
    return uri


def parse_raw_query(raw_query: str) -> list[tuple[str, str]]:
    """Split a raw query string into decoded ``(key, value)`` pairs, keeping blank values.

    :param raw_query: the query string as received, without ``?``.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    """Canonical query string: pairs sorted by key then value, each side quoted with ``safe="~"``.

    :param pairs: decoded query pairs.
    """
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs))


def _header_value(value: str) -> str:
    # http.server decodes header bytes as latin-1; the SDK sends non-ASCII values as utf-8 bytes.
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def canonical_request(
    method: str,
    *,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: list[str],
    body: bytes,
) -> str:
    """Build the canonical request of a received request for the given signed header names.

    :param method: HTTP method.
    :param raw_path: path as received.
    :param raw_query: query string as received.
    :param headers: received headers, looked up case-insensitively (lowercase keys).
    :param signed_headers: lowercase header names listed in ``SignedHeaders``.
    :param body: the request body as received.
    :raises SignatureError: when a listed header is missing.
    """
    lines = []
    for name in signed_headers:
        if name not in headers:
            raise SignatureError(f"signed header {name} is missing")
        lines.append(f"{name}:{_header_value(headers[name]).strip()}\n")
    if not body:
        payload_hash = EMPTY_SHA256
    elif "x-sdk-content-sha256" in headers:
        payload_hash = headers["x-sdk-content-sha256"]
    else:
        payload_hash = hashlib.sha256(body).hexdigest()
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(parse_raw_query(raw_query)),
            "".join(lines),
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def string_to_sign(sdk_date: str, canonical: str) -> str:
    """``SDK-HMAC-SHA256`` string to sign.

    :param sdk_date: the ``X-Sdk-Date`` value.
    :param canonical: the canonical request.
    """
    return "SDK-HMAC-SHA256\n" + sdk_date + "\n" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sdk_signature(secret_key: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign keyed with the SK.

    :param secret_key: the secret key.
    :param to_sign: the string to sign.
    """
    return hmac.new(secret_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_sdk_hmac(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    lookup: Callable[[str], tuple[str, str | None] | None],
    *,
    now: datetime | None = None,
) -> VerifiedRequest:
    """Verify an ``SDK-HMAC-SHA256`` signed request the way the API gateway does.

    :param method: HTTP method as received.
    :param target: the raw request target (path and query) as received.
    :param headers: received headers with lowercase names.
    :param body: request body bytes.
    :param lookup: maps an AK to ``(secret_key, required_security_token_or_None)``, or None if unknown.
    :param now: the server time (defaults to the current UTC time).
    :raises SignatureError: when the request is not correctly signed.
    """
    authorization = headers.get("authorization", "")
    match = _AUTH_RE.match(authorization.strip())
    if not match:
        raise SignatureError("Authorization header is missing or malformed")
    access_key = match.group(1) or match.group(2)
    signed_headers = match.group(3).lower().split(";")
    signature = match.group(4).lower()

    sdk_date = headers.get("x-sdk-date")
    if not sdk_date:
        raise SignatureError("x-sdk-date not found")
    if "x-sdk-date" not in signed_headers:
        raise SignatureError("x-sdk-date is not signed")
    try:
        signed_at = datetime.strptime(sdk_date, SDK_DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise SignatureError("x-sdk-date is malformed") from None
    current = now or datetime.now(timezone.utc)
    if abs((current - signed_at).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
        raise SignatureError("x-sdk-date is more than 15 minutes from server time")

    credentials = lookup(access_key)
    if credentials is None:
        raise SignatureError("access key not found")
    secret_key, required_token = credentials
    token = headers.get("x-security-token")
    if required_token is not None and not (token and hmac.compare_digest(token, required_token)):
        raise SignatureError("security token is missing or invalid")

    raw_path, _, raw_query = target.partition("?")
    canonical = canonical_request(
        method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        signed_headers=signed_headers,
        body=body,
    )
    expected = sdk_signature(secret_key, string_to_sign(sdk_date, canonical))
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("verify aksk signature fail")
    return VerifiedRequest(access_key=access_key, security_token=token)


def obs_string_to_sign(
    method: str, expires: int | str, resource: str, content_md5: str = "", content_type: str = ""
) -> str:
    """OBS V2 string to sign for a pre-signed URL (no ``x-obs-*`` headers).

    :param method: HTTP method.
    :param expires: absolute expiry in unix seconds.
    :param resource: canonicalised resource ``/bucket/key[?sub-resources]``.
    :param content_md5: Content-MD5 header value (empty for GET).
    :param content_type: Content-Type header value (empty for GET).
    """
    return f"{method.upper()}\n{content_md5}\n{content_type}\n{expires}\n{resource}"


def obs_signature(secret_key: str, to_sign: str) -> str:
    """Base64 HMAC-SHA1 OBS V2 signature (not URL-encoded).

    :param secret_key: the OBS secret key.
    :param to_sign: the string to sign.
    """
    digest = hmac.new(secret_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")
