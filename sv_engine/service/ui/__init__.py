"""The editing studio: one static page (HTML, JS, CSS in ./static) served at ``/ui`` by the API's own app.

The page calls the same job API as any client (``/clips``, ``/jobs``, ``/jobs/render``, ...), so it
runs on the same warm workers, behind the same bearer token. Nothing is fetched from anywhere else:
no CDN, no fonts, no analytics, and the Content-Security-Policy sent with the page forbids it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "static"
# The page may talk to this server only (blob: URLs hold the images and videos it fetched with the token).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self' blob:; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class StudioFiles(StaticFiles):
    """The studio's files, with the CSP and no caching (a new sv-engine version serves a new page)."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_ui(app: FastAPI) -> None:
    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui/", StudioFiles(directory=UI_DIR, html=True), name="ui")
