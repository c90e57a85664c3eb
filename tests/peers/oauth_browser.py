#!/usr/bin/env python3
"""A headless "browser" for the OAuth end-to-end tests: an HTTP client with a
cookie jar (``httpx2``, the HTTP client the ``mcp`` SDK pins, so the venv has
it) that walks an authorization server's pages the way a user agent would,
without JavaScript: it follows redirects itself and submits the one form a
page carries (every ``<input>`` with its value; hidden xsrf fields included).

Usage:
    oauth_browser.py authorize URL
        GETs the authorization URL and follows redirects and forms while they
        stay on URL's origin (the issuer: /auth -> /interaction/:uid ->
        /auth/:uid ...). At the first redirect whose Location is on another
        origin (the client's loopback redirect URI) it stops without
        following it, prints that Location (absolute) on stdout and exits 0;
        the Location carries code, state and iss, or error and
        error_description.

    oauth_browser.py device URL USER_CODE
        Approves a device authorization (RFC 8628) as the user would: GETs URL
        (the verification_uri, or the verification_uri_complete), enters
        USER_CODE into the code form, confirms, lets the interaction be
        finished, and exits 0 when it reaches a page that asks for nothing
        more (the success page). Prints that page's title on stdout.

    oauth_browser.py pkce
        Prints a fresh PKCE pair (RFC 7636, S256) as two lines,
        ``code_verifier`` then ``code_challenge``.

Exit status: 0 as above; 1 when the server answers with an error page (a 4xx
or 5xx, or a page that says the code was wrong), leaves the issuer's origin
with a form, or loops; the page (status, URL and body) goes to stderr; 2 on
a usage error. Talks to the URLs given only (no proxy from the environment),
30 s timeout per request.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import secrets
import sys
from urllib.parse import urlencode, urljoin, urlsplit

import httpx2

MAX_STEPS = 20
TIMEOUT = 30.0
FORM = {"content-type": "application/x-www-form-urlencoded"}


class Failure(Exception):
    """The walk cannot go on; the message says why."""


class Form:
    """One <form>: its method, action and fields in document order."""

    def __init__(self, method: str, action: str) -> None:
        self.method = method
        self.action = action
        self.fields: list[tuple[str, str]] = []


class FormParser(html.parser.HTMLParser):
    """Collects the forms of a page and the text of its <title>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.title = ""
        self.has_error_text = False
        self._in_title = False
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = Form(a.get("method", "get").lower(), a.get("action", ""))
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current.fields.append((a["name"], a.get("value", "")))
        elif tag == "title":
            self._in_title = True
        # oidc-provider's device pages flag a wrong or used code this way.
        if "red" in a.get("class", "").split():
            self.has_error_text = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), parts.netloc.lower())


def describe(response: httpx2.Response) -> str:
    return (
        f"{response.request.method} {response.request.url} -> {response.status_code}\n"
        f"{response.text}"
    )


def walk(
    client: httpx2.Client,
    start: str,
    user_code: str | None,
) -> tuple[str, str]:
    """Walks from `start`; returns ("redirect", location) at the first
    redirect off the start origin, or ("page", title) at a page without a
    form."""
    home = origin(start)
    method, url, body = "GET", start, None
    entered_code = False
    for _ in range(MAX_STEPS):
        if body is None:
            response = client.request(method, url)
        else:
            response = client.request(method, url, content=body, headers=FORM)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if origin(location) != home:
                return ("redirect", location)
            method, url, body = "GET", location, None
            continue
        if response.status_code >= 400:
            raise Failure(f"error page:\n{describe(response)}")
        page = FormParser()
        page.feed(response.text)
        page.close()
        if page.has_error_text:
            raise Failure(f"the page reports an error:\n{describe(response)}")
        if not page.forms:
            return ("page", page.title.strip())
        form = page.forms[0]
        action = urljoin(str(response.url), form.action or str(response.url))
        if origin(action) != home:
            raise Failure(f"a form posts off the issuer's origin ({action}):\n{describe(response)}")
        fields = []
        for name, value in form.fields:
            if name == "user_code" and not value:
                if user_code is None or entered_code:
                    raise Failure(f"asked for a user code again:\n{describe(response)}")
                value = user_code
                entered_code = True
            fields.append((name, value))
        if form.method == "post":
            method, url, body = "POST", action, urlencode(fields).encode("ascii")
        else:
            method, url, body = "GET", str(httpx2.URL(action, params=fields)), None
    raise Failure(f"no end after {MAX_STEPS} steps (last: {method} {url})")


def authorize(url: str) -> int:
    with httpx2.Client(follow_redirects=False, trust_env=False, timeout=TIMEOUT) as client:
        kind, value = walk(client, url, None)
    if kind != "redirect":
        raise Failure(f"ended at a page ({value!r}) instead of a redirect to the client")
    print(value, flush=True)
    return 0


def device(url: str, user_code: str) -> int:
    with httpx2.Client(follow_redirects=False, trust_env=False, timeout=TIMEOUT) as client:
        kind, value = walk(client, url, user_code)
    if kind != "page":
        raise Failure(f"the device flow redirected off the issuer: {value}")
    print(value, flush=True)
    return 0


def pkce() -> int:
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    print(verifier)
    print(challenge, flush=True)
    return 0


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["authorize", url]:
                return authorize(url)
            case ["device", url, user_code]:
                return device(url, user_code)
            case ["pkce"]:
                return pkce()
            case _:
                print(__doc__, file=sys.stderr)
                return 2
    except Failure as failure:
        print(f"oauth_browser: {failure}", file=sys.stderr)
        return 1
    except httpx2.HTTPError as error:
        print(f"oauth_browser: HTTP failure: {error!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
