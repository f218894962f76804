"""Authentication in the emulator: AK/SK signature checks, IAM token issuance and token checks."""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_modelarts.emulator.http import Reject
from airflow_provider_modelarts.emulator.signing import SignatureError, verify_sdk_hmac
from airflow_provider_modelarts.emulator.state import Knobs

__all__ = ["TOKEN_LIFETIME", "Identity", "IdentityService", "iso_time"]

TOKEN_LIFETIME = timedelta(hours=24)


def iso_time(moment: datetime) -> str:
    """A time as IAM writes it (UTC, microseconds)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "000Z"


def _auth_failure(reason: str) -> Reject:
    return Reject(401, "APIG.0301", f"Incorrect IAM authentication information: {reason}", apig=True)


@dataclass(frozen=True)
class Identity:
    """The credentials the emulator accepts.

    :param ak: access key for ``SDK-HMAC-SHA256`` signatures.
    :param sk: its secret key.
    :param temporary_credentials: an extra ``(ak, sk, security_token)`` triple, or None.
    :param iam_user: IAM user name.
    :param iam_password: its password.
    :param domain: its account (domain) name.
    :param project_id: the one project.
    :param region: the region, also accepted as the project name in token scopes.
    """

    ak: str
    sk: str
    temporary_credentials: tuple[str, str, str] | None
    iam_user: str
    iam_password: str
    domain: str
    project_id: str
    region: str

    def secret_for(self, access_key: str) -> tuple[str, str | None] | None:
        """The secret key and security token (if any) of an access key; None for an unknown one."""
        if hmac.compare_digest(access_key, self.ak):
            return self.sk, None
        temporary = self.temporary_credentials
        if temporary and hmac.compare_digest(access_key, temporary[0]):
            return temporary[1], temporary[2]
        return None


class IdentityService:
    """Checks request credentials and issues IAM tokens.

    :param identity: the accepted credentials.
    :param knobs: the emulator's fault knobs (``expire_token_once``).
    :param base_url: returns the emulator's base URL (for the token's service catalog).
    """

    def __init__(self, identity: Identity, *, knobs: Knobs, base_url: Callable[[], str]) -> None:
        self.identity = identity
        self._knobs = knobs
        self._base_url = base_url
        self._lock = threading.Lock()
        self._tokens: dict[str, dict[str, Any]] = {}

    def authenticate(self, method: str, target: str, headers: dict[str, str], body: bytes) -> str:
        """Check a ModelArts API request; return ``"token"`` or ``"aksk"`` or raise :class:`Reject`."""
        token = headers.get("x-auth-token")
        if token is not None:
            self._check_token(token)
            return "token"
        if "authorization" not in headers:
            raise _auth_failure("x-auth-token not found")
        try:
            verify_sdk_hmac(method, target, headers, body, self.identity.secret_for)
        except SignatureError as err:
            raise _auth_failure(str(err)) from None
        return "aksk"

    def _check_token(self, token: str) -> None:
        with self._lock:
            info = self._tokens.get(token)
            if info is None:
                raise _auth_failure("decrypt token fail")
            if info["expires"] <= datetime.now(timezone.utc) or self._knobs.expire_token_once:
                self._knobs.expire_token_once = False
                del self._tokens[token]
                raise _auth_failure(f"token expires, expires_at: {iso_time(info['expires'])}")
        if info["project_id"] is None:
            raise Reject(401, "ModelArts.0207", "The token must contain project info.")

    def _check_password(self, body: bytes) -> dict[str, Any]:
        try:
            auth = json.loads(body or b"{}")["auth"]
            identity = auth["identity"]
            user = identity["password"]["user"]
            methods = identity["methods"]
        except (ValueError, KeyError, TypeError):
            raise Reject(400, "IAM.0011", "Request body is invalid.") from None
        if "password" not in methods:
            raise Reject(400, "IAM.0011", "Only the password method is supported by the emulator.")
        user_domain = (user.get("domain") or {}).get("name")
        if not (
            hmac.compare_digest(str(user.get("name", "")), self.identity.iam_user)
            and hmac.compare_digest(str(user.get("password", "")), self.identity.iam_password)
            and user_domain == self.identity.domain
        ):
            raise Reject(401, "IAM.0004", "The username or password is wrong.")
        return auth

    def _scoped_project(self, auth: dict[str, Any]) -> str | None:
        scope = auth.get("scope") or {}
        if "project" not in scope:
            return None
        project = scope["project"] or {}
        if project.get("id") not in (None, self.identity.project_id) or project.get("name") not in (
            None,
            self.identity.region,
        ):
            raise Reject(401, "IAM.0002", "The project in the scope does not exist.")
        return self.identity.project_id

    def issue_token(self, body: bytes, query: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        """Answer ``POST /v3/auth/tokens``: the new token and the response document."""
        project_id = self._scoped_project(self._check_password(body))
        issued = datetime.now(timezone.utc)
        expires = issued + TOKEN_LIFETIME
        token = "MIIEmulator" + base64.urlsafe_b64encode(secrets.token_bytes(96)).decode("ascii").rstrip("=")
        with self._lock:
            self._tokens[token] = {"expires": expires, "project_id": project_id}
        domain = {"id": "emulator-domain-id", "name": self.identity.domain}
        result: dict[str, Any] = {
            "expires_at": iso_time(expires),
            "issued_at": iso_time(issued),
            "methods": ["password"],
            "roles": [{"id": "0", "name": "te_admin"}],
            "user": {
                "id": "emulator-user-id",
                "name": self.identity.iam_user,
                "password_expires_at": "",
                "domain": domain,
            },
        }
        if project_id is not None:
            result["project"] = {"id": project_id, "name": self.identity.region, "domain": domain}
        else:
            result["domain"] = domain
        if not any(k == "nocatalog" and v for k, v in query):
            result["catalog"] = [self._catalog_entry()]
        return token, {"token": result}

    def _catalog_entry(self) -> dict[str, Any]:
        region = self.identity.region
        endpoint = {
            "url": self._base_url(),
            "region": region,
            "region_id": region,
            "interface": "public",
            "id": "emulator-endpoint",
        }
        return {"type": "modelarts", "id": "emulator-modelarts", "name": "modelarts", "endpoints": [endpoint]}
