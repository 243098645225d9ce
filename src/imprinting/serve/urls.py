"""Store targets as the user writes them: a file path, or a ``postgresql://`` URL, and how a URL
is printed (its password hidden). A leaf module: the stores and the CLI import it, it imports none
of them."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target) -> bool:
    """Whether ``target`` names a PostgreSQL database (a URL), not a file."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def redact(target) -> str:
    """``target`` as it may be printed or logged: a URL's password replaced by ``***``."""
    text = str(target)
    if not is_postgres(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = "&".join("password=***" if q.lower().startswith("password=") else q for q in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
