"""The Account page: the staff password, and the staff settings downloaded or restored from a file (the rules
are in account.py); its Update section is update.py's."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from kiosk.errors import ConfigError
from kiosk.staff import account, update
from kiosk.staff.common import BACKEND, FORM, LIMITER, SESSION, SESSIONS, password_file, render

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


MAX_UPLOAD_BYTES = 64 * 1024


@routes.get("/account")
async def account_page(
    request: web.Request, errors: dict | None = None, notice: str | None = None, status: int = 200
) -> web.Response:
    return render(
        "account.html",
        request,
        status=status,
        errors=errors or {},
        notice=notice,
        values={},
        update=await update.section(request),
    )


@routes.post("/account/password")
async def change_password(request: web.Request) -> web.Response:
    form = request[FORM]
    current, new, repeat = (str(form.get(name, "")) for name in ("current", "new", "repeat"))
    passwords = password_file(request.app[BACKEND])
    limiter, address = request.app[LIMITER], request.remote or "?"
    if limiter.begin(address):  # the current password is a guess like any other
        return await account_page(
            request, {"current": "too many wrong passwords; try again in a few minutes"}, status=429
        )
    errors = await asyncio.to_thread(account.password_change_errors, passwords, current, new, repeat)
    if "current" in errors:
        limiter.failed(address)
        log.info("staff password change: wrong current password from %s", address)
        return await account_page(request, errors, status=400)
    limiter.succeeded(address)
    if errors:
        return await account_page(request, errors, status=400)
    try:
        await asyncio.to_thread(passwords.set, new)
    except ConfigError as exc:
        return await account_page(request, {"new": exc.problems[0]}, status=503)
    request.app[SESSIONS].end_all_but(request[SESSION].token)  # whoever knew the old password is logged out
    log.warning("staff password changed from %s", address)
    return await account_page(request, notice="Password changed.")


@routes.get("/account/settings.yaml")
async def download_settings(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(account.settings_file_bytes, request.app[BACKEND].cfg.staff.settings_file)
    stamp = time.strftime("%Y-%m-%d")
    headers = {"Content-Disposition": f'attachment; filename="kiosk-staff-settings-{stamp}.yaml"'}
    return web.Response(body=body, content_type="application/x-yaml", headers=headers)


@routes.post("/account/settings")
async def upload_settings(request: web.Request) -> web.Response:
    upload = request[FORM].get("settings")
    if upload is None or isinstance(upload, str):
        return await account_page(request, {"settings": "choose a settings file to restore"}, status=400)
    try:
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    finally:
        upload.file.close()
    backend = request.app[BACKEND]
    async with backend.settings_lock:  # not between another writer's read and its write
        try:
            path = backend.cfg.staff.settings_file
            await asyncio.to_thread(account.restore_settings, backend.config_path, path, data)
        except ConfigError as exc:
            return await account_page(request, {"settings": "; ".join(exc.problems[:5])}, status=400)
        await backend.reload()
    return await account_page(request, notice="Settings restored; the previous ones are kept as a .bak file.")
