"""Keep credentials out of what the project writes for people to read (console, MLflow params/tags, reports).

``redact(text)`` hides the password of any ``scheme://user:password@host`` URI, ``token=``/``password=``
style query values, and the literal value of every secret-looking environment variable (``RAY_AUTH_TOKEN``,
``MLFLOW_TRACKING_TOKEN``, ``*_PASSWORD``, ``*_SECRET*``, ...) and of Ray's token file — whatever place
the text is headed for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

MASK = "***"
SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]+:)(?P<secret>[^@\s/]+)(?P<at>@)")
QUERY_SECRET = re.compile(r"(?P<head>[?&;\s](?:access_?token|token|password|passwd|secret|api_?key|access_?key)=)"
                          r"(?P<secret>[^&\s;]+)", re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter env values ("1", "true") would mask ordinary text


def secret_values() -> list[str]:
    """Literal secrets known to this process: secret-named environment variables and Ray's token file."""
    values = [v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= MIN_SECRET_LENGTH]
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    try:
        token = token_file.read_text().strip()
    except OSError:
        token = ""
    if len(token) >= MIN_SECRET_LENGTH:
        values.append(token)
    return sorted(set(values), key=len, reverse=True)


def redact(text: str) -> str:
    text = URI_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], str(text))
    text = QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redact_value(value: Any) -> Any:
    """``redact`` for strings inside (nested) params; other values unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
