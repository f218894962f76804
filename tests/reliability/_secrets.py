"""Finding leaked credentials and link signatures in captured text (logs, XCom, exception messages)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

# A signature or security token in a pre-signed URL, whatever the signing flavour (OBS V2, S3 V4).
_SIGNED_PARAM = re.compile(
    r"(?i)[?&](?:Signature|X-Amz-Signature|x-obs-security-token|x-amz-security-token)=([^&\s\"'<>\\,)\]}]+)"
)
_MASKED = {"***", "%2A%2A%2A", "%2a%2a%2a", "REDACTED", "<redacted>"}


def forms(secret: str) -> set[str]:
    """The raw, URL-encoded (both styles) and URL-decoded forms of ``secret``."""
    return {secret, quote(secret, safe=""), quote_plus(secret), unquote(secret)} - {""}


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """Describe every secret (in any form) and every unmasked link signature found in ``text``.

    :param text: everything captured.
    :param secrets: credentials that must never appear (SK, passwords, tokens, known signatures).
    """
    leaks: list[str] = []
    for secret in secrets:
        if not secret or len(secret) < 5:
            continue
        for form in forms(secret):
            at = text.find(form)
            if at >= 0:
                leaks.append(
                    f"secret {secret[:3]}... appears as {form[:3]}... near {text[max(0, at - 80) : at]!r}"
                )
                break
    for m in _SIGNED_PARAM.finditer(text):
        if m.group(1) not in _MASKED and not m.group(1).startswith("***"):
            leaks.append(f"unmasked link signature near {text[max(0, m.start() - 80) : m.start() + 12]!r}...")
    return leaks


def read_tree(root: Path) -> str:
    """All text files under ``root`` concatenated (binary-safe)."""
    parts = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            parts.append(f"\n===== {path} =====\n" + path.read_text(errors="replace"))
    return "".join(parts)
