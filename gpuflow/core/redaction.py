"""What an error may say about a value that can hold a secret: where it went wrong, never
the value. A validation error names the field and the rule, not the input; a database
URL shows its host, port and database, not its user, password or query."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import yaml
    from pydantic import ValidationError


def validation_problems(error: ValidationError) -> str:
    """Each bad field and the rule it broke, without the rejected input."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(top level)'}: {problem['msg']}"
        for problem in error.errors(include_input=False, include_url=False, include_context=False)
    )


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where a YAML document is broken and why, without quoting its text."""
    problem = getattr(error, "problem", None) or type(error).__name__
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def redacted_url(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no credentials and no query (which may carry
    ``password=``). A URL whose credentials are not percent-encoded (a ``/``, ``?`` or
    ``#`` in the password) cannot be told apart from its host, so none of it is shown."""
    scheme = url.partition("://")[0] if "://" in url else "?"
    hidden = f"{scheme}://<malformed URL: credentials hidden>"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return hidden
    if not parts.hostname or "@" in parts.path:
        return hidden
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}{f':{port}' if port else ''}{parts.path}"
