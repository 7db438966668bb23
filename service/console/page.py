"""The console page's static files (`static/`), read once and served with headers that forbid anything else.

The Content-Security-Policy allows scripts, styles and requests from this origin only: the page works
without any CDN, and an injected script or a third-party asset would be refused by the browser.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

ASSETS = {  # file name → media type; nothing outside this list is ever served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",  # the page's state and wiring, an ES module importing the rest
    "allocations.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "campaigns.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "flight.js": "text/javascript; charset=utf-8",
    "mix.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release's page must not run against a stale script
}


@cache
def asset(name: str) -> bytes:
    """The bytes of a static file of the page (KeyError for a name not in `ASSETS`)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("service.console").joinpath("static", name).read_bytes()
