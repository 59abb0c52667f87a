"""Open psycopg connections with the settings every sync uses, and keep passwords out of messages.

A DSN is parsed here once: a malformed one is a ConfigError whose message never quotes it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from reverse_etl_assets.errors import ConfigError, ReverseEtlError, translate

APPLICATION_NAME = "reverse_etl"
# Every session reads dates, timestamps and intervals in the forms psycopg parses, whatever the
# database or role sets (a `DateStyle` of German made reading the pipeline's own state fail).
PINNED_OPTIONS = "-c datestyle=ISO,MDY -c intervalstyle=postgres"


def parse_dsn(dsn: str, *, where: str = "REVERSE_ETL_PG_DSN") -> dict[str, str]:
    """The DSN's parameters; a malformed DSN is a ConfigError that does not repeat it (the
    parser's own message quotes the offending part, which may be the password)."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError:
        raise ConfigError(
            f"{where} is not a valid libpq connection string or URI (its text is not shown: it "
            "may hold a password). In a URI, characters such as % @ : / ? # in the user name or "
            "password must be percent-encoded (% is %25, @ is %40); or use the key=value form"
        ) from None


def connect(
    dsn: str, *, autocommit: bool = False, options: str | None = None
) -> psycopg.Connection:
    """A new connection; a refused or unreachable server is translated by the error policy
    (unreachable: transient; a missing role or database, a wrong password: terminal).

    An `application_name` in the DSN is kept: the follower names its sessions with it.
    `options` (`-c name=value …`) pins settings for the session, after the DSN's own `options`
    and PINNED_OPTIONS (the last setting of a name wins).
    """
    params = parse_dsn(dsn)
    name = params.get("application_name") or APPLICATION_NAME
    pinned = " ".join(part for part in (params.get("options"), PINNED_OPTIONS, options) if part)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name=name, options=pinned)
    except psycopg.Error as exc:
        translated = translate(exc) or ReverseEtlError(str(exc))
        message = redact(f"cannot connect to Postgres ({describe_dsn(dsn)}): {translated}", dsn)
        raise type(translated)(message) from exc


def describe_dsn(dsn: str) -> str:
    """The DSN's host, port, database and user, for messages (never the password)."""
    info = parse_dsn(dsn)
    shown = ("host", "port", "dbname", "user")
    return " ".join(f"{k}={info[k]}" for k in shown if info.get(k))


def redact(text: str, dsn: str) -> str:
    """`text` with the DSN's password removed, in its plain and percent-encoded forms."""
    try:
        password = parse_dsn(dsn).get("password")
    except ConfigError:
        password = _raw_password(dsn)
    for secret in {password, unquote(password or ""), _raw_password(dsn)}:
        if secret:
            text = text.replace(secret, "***")
    return text


_KEYWORD_PASSWORD = re.compile(r"""password\s*=\s*('((?:[^'\\]|\\.)*)'?|\S+)""")


def _raw_password(dsn: str) -> str | None:
    """The password as written in a URI's userinfo or a key=value string's `password=`, even
    when the DSN does not parse."""
    if "://" not in dsn:
        found = _KEYWORD_PASSWORD.search(dsn)
        if found is None:
            return None
        return (found.group(2) if found.group(2) is not None else found.group(1)) or None
    userinfo = dsn.split("://", 1)[1].rsplit("@", 1)
    if len(userinfo) != 2 or ":" not in userinfo[0]:
        return None
    return userinfo[0].split(":", 1)[1] or None
