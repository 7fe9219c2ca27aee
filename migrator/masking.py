"""Every spelling a password can take in output, and the one mask that every output goes
through (text and JSON logs, tracebacks, stdout, the termination message, the action's masks).

What is guaranteed: a URL's password (userinfo or `password=`) is hidden by the URL's
structure, whatever it is; and each password is hidden wherever it appears, in each of its
spellings (as given, URL-encoded either way, as SQLAlchemy renders it, %-escaped for
configparser, escaped inside JSON or a Python repr). A password shorter than
SHORT_PASSWORD characters is hidden only where it stands alone, not inside a longer word or
revision id, so that `other` does not turn `another` into `an***`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

HIDDEN = "***"
SHORT_PASSWORD = 8
# scheme://user:PASSWORD@ (a password's own / and @ are %-encoded in a URL), and
# password=VALUE in a query string or a libpq keyword string.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^/@]*?)(@)")
# libpq's secret connection parameters: those its option list (PQconndefaults) marks with
# dispchar "*". Each is hidden by name wherever it is written NAME=VALUE.
SECRET_PARAMETERS = ("password", "sslpassword", "oauth_client_secret")
_PASSWORD_PARAMETER = re.compile(
    r"(\b(?:" + "|".join(SECRET_PARAMETERS) + r")=)([^&\s'\"]*)", re.IGNORECASE
)


def passwords_in(url: URL | None) -> list[str]:
    """The secrets a URL carries: its userinfo's password and every secret parameter of
    its query string."""
    if url is None:
        return []
    found = [url.password] if url.password else []
    for name in SECRET_PARAMETERS:
        parameter = url.query.get(name)
        found += [parameter] if isinstance(parameter, str) else list(parameter or ())
    return [str(password) for password in found if password]


def spellings(password: str) -> set[str]:
    """Every way `password` can be printed by us, SQLAlchemy, configparser, JSON or repr."""
    encoded = {
        password,
        quote(password, safe=""),
        quote_plus(password),
        quote(password),
        quote(password, safe=" +"),  # as SQLAlchemy renders a URL's password
    }
    forms = encoded | {form.replace("%", "%%") for form in encoded}
    escaped = {json.dumps(form)[1:-1] for form in forms} | {repr(form)[1:-1] for form in forms}
    return {form for form in forms | escaped if form}


class Mask:
    """Hides the given passwords, and any URL's password, in a text."""

    def __init__(self, passwords: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        short: set[str] = set()
        for password in passwords:
            (short if len(password) < SHORT_PASSWORD else forms).update(spellings(password))
        # Longest first, so that a form containing another is hidden whole.
        self.forms = sorted(forms, key=len, reverse=True)
        self.short = (
            re.compile(
                r"(?<![A-Za-z0-9])(?:"
                + "|".join(re.escape(form) for form in sorted(short, key=len, reverse=True))
                + r")(?![A-Za-z0-9])"
            )
            if short
            else None
        )

    def __call__(self, text: str) -> str:
        text = _URL_PASSWORD.sub(rf"\g<1>{HIDDEN}\g<3>", text)
        text = _PASSWORD_PARAMETER.sub(rf"\g<1>{HIDDEN}", text)
        for form in self.forms:
            text = text.replace(form, HIDDEN)
        if self.short is not None:
            text = self.short.sub(HIDDEN, text)
        return text
