"""Standard Webhooks signing written here from the specification, to check deliveries and ``timerctl verify``
independently of the library the runner signs with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET = "whsec_" + base64.b64encode(b"the current secret, 32 bytes ok!").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"the previous secret, before 2026").decode()


def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` with the base64 key after ``whsec_``, per the spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()
