"""The one way a URL or an error is shown: no credentials, no query string, one line."""

from __future__ import annotations

import pytest

from timerctl.redaction import MAX_ERROR_CHARS, one_line, redact_url, scrub

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/fire", "https://hooks.example/fire"),
        ("https://hooks.example/fire?token=SECRET#frag", "https://hooks.example/fire"),
        ("https://user:SECRET@hooks.example:8443/x", "https://***@hooks.example:8443/x"),
        ("https://hooks.example/users/@me?x=SECRET", "https://hooks.example/users/@me"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/2", "redis://***@h:1/2"),
        ("rediss://u:p@w@h/0", "rediss://***@h/0"),
        (f"redis://h:1/0?password={SECRET}&db=1", "redis://h:1/0"),
        (f"redis://ops:{SECRET}@h@x:1/0", "redis://***@x:1/0"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock"),
        # Does not parse: redacted as text all the same.
        (f"redis://ops:{SECRET}@[bad", "redis://***@[bad"),
        (f"http://[::1/x?t={SECRET}", "http://[::1/x"),
        # Not absolute: only the query can be taken away.
        (f"hooks.example/x?token={SECRET}", "hooks.example/x"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_shows_no_credentials_query_or_fragment(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrub_redacts_every_url_inside_a_text() -> None:
    text = f"ClientResponseError: 400, message='Bad status', url='http://10.0.0.1:80/hook?token={SECRET}' <x>"

    assert scrub(text) == "ClientResponseError: 400, message='Bad status', url='http://10.0.0.1:80/hook' <x>"
    assert scrub("no address here") == "no address here"


def test_one_line_names_the_exception_joins_lines_redacts_and_cuts() -> None:
    assert one_line(ValueError("bad\n  value")) == "ValueError: bad value"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(f"failed at\thttps://u:{SECRET}@h/x?t={SECRET}") == "failed at https://***@h/x"
    long = one_line("x" * 10_000)
    assert len(long) == MAX_ERROR_CHARS and long.endswith("…")
    assert SECRET not in one_line(f"https://h/?q={SECRET}" + "y" * 600, limit=40)
