"""Keep credentials out of everything stseg writes: run.json, the work manifest, logs, errors.

Credentials reach a run three ways: ``storage_options`` in the config (file, ``--set`` or
``STSEG_*`` environment), the cloud SDKs' own environment variables, and URLs with a user:password
part or a signed query string. :func:`redact` masks them in a record before it is written (every
``storage_options`` value, and the value of any key whose name looks like a credential);
:func:`scrub` masks them in free text (error messages, log lines), using the secret values seen
in configs and the environment (:func:`register`).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
#: Name parts that mark a credential (``aws_secret_access_key``, ``token``, ``sas_token``, ...).
_PARTS = {
    "key",
    "keys",
    "secret",
    "secrets",
    "token",
    "password",
    "passwd",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "signature",
    "sig",
    "cookie",
    "sas",
    "apikey",
}
_FRAGMENTS = (
    "secret",
    "token",
    "passw",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "signature",
)
#: Names that look like credentials but are not (this project's own fields).
_NOT_SECRET = {"run_key"}
_MIN_LEN = 6  # shorter values are not scrubbed from free text (too many false hits)
_SECRETS: set[str] = set()
_URL_USER = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:'\"]*)(?::[^/@\s'\"]*)?@"
)
_QUERY = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&#\s'\"]+)")


def is_sensitive(name: str) -> bool:
    """Whether a key name looks like it holds a credential."""
    if not isinstance(name, str) or name in _NOT_SECRET:
        return False
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    parts = set(re.split(r"[^a-z0-9]+", snake))
    flat = re.sub(r"[^a-z0-9]", "", snake)
    return bool(parts & _PARTS) or any(f in flat for f in _FRAGMENTS)


def _leaves(obj: Any) -> list[str]:
    """The strings in a record (numbers and flags are masked in records, not hunted in text)."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _leaves(v)]
    return [obj] if isinstance(obj, str) and obj else []


def secrets_in(obj: Any, inside: bool = False) -> list[str]:
    """Values of a config-like record that are credentials (see :func:`redact`)."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if inside or k == "storage_options" or is_sensitive(k):
                out += _leaves(v)
            else:
                out += secrets_in(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in secrets_in(v, inside)]
    return _leaves(obj) if inside else []


def register(*records: Any, environ: dict[str, str] | None = None) -> None:
    """Remember the secret values in config-like ``records`` (pass raw storage options as
    ``{"storage_options": so}``) and in the environment's credential-like variables, so that
    :func:`scrub` masks them in free text.
    """
    for rec in records:
        _SECRETS.update(s for s in secrets_in(rec) if len(s) >= _MIN_LEN)
    env = os.environ if environ is None else environ
    _SECRETS.update(v for k, v in env.items() if is_sensitive(k) and len(v) >= _MIN_LEN)


def scrub(text: str) -> str:
    """``text`` with known secret values, URL passwords and signed query values masked."""
    if not isinstance(text, str):
        return text
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    text = _URL_USER.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY.sub(lambda m: m["lead"] + MASK if is_sensitive(m["name"]) else m[0], text)


def redact(obj: Any, inside: bool = False) -> Any:
    """A copy of a JSON-like record with credentials masked: every value under a
    ``storage_options`` key or a credential-like key, and secrets inside any string.
    """
    if isinstance(obj, dict):
        return {
            k: redact(v, inside or k == "storage_options" or is_sensitive(k))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v, inside) for v in obj]
    if inside and obj not in (None, "") and not isinstance(obj, bool):
        return MASK
    return scrub(obj) if isinstance(obj, str) else obj


class ScrubFilter(logging.Filter):
    """A handler filter that masks secrets in every log line passing through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add :class:`ScrubFilter` to every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
