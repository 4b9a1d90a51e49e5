"""Secrets out of what is shown: URLs without credentials or query strings, errors on one line — pure.

Webhook URLs often carry tokens (``?token=…``, ``user:pass@``) and client libraries put the whole URL
in their exception texts. Everything stored (``lastError``), logged or answered to an API client goes
through these helpers, so a secret in a URL is never repeated anywhere else.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: A URL inside free text: a scheme, ``://``, then anything up to whitespace, a quote or a bracket.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_SPACES = re.compile(r"\s+")
#: Longest error text kept for ``lastError`` and log lines.
MAX_ERROR_CHARS = 500


def redact_url(url: str) -> str:
    """``url`` without its query string and fragment, any ``user:password@`` shown as ``***@``.

    The one form in which a URL is shown anywhere: webhook URLs in errors and logs, backend URLs in
    ``doctor`` and warnings. A URL that does not parse is redacted as text, the credentials ending at the
    last ``@`` of the authority, so a malformed URL never shows more than a good one.
    """
    try:
        parts = urlsplit(url)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path
    except ValueError:
        scheme, sep, rest = url.partition("://")
        if not sep:
            return "<not a URL>"
        authority = rest.split("?", 1)[0].split("#", 1)[0]
        netloc, path = authority, ""
    if not scheme or not netloc:
        # Not an absolute URL: nothing to take apart, but a query may still hold a secret.
        return url.split("?", 1)[0].split("#", 1)[0]
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{path}"


def scrub(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text


def one_line(error: BaseException | str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error as one line, URLs redacted, at most ``limit`` characters.

    An exception reads ``TypeName: message`` (or just ``TypeName`` when it has no message), so a line
    says what kind of failure it was even when the library's message is terse.
    """
    if isinstance(error, BaseException):
        name, text = type(error).__name__, _SPACES.sub(" ", str(error)).strip()
        line = text if text.startswith(name) else f"{name}: {text}" if text else name
    else:
        line = _SPACES.sub(" ", error).strip()
    line = scrub(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"
