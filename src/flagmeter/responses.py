"""The JSON every FlagMeter server answers with, and its one error shape. Kept out of the API's
package: the worker's small server (flagmeter.probes) answers with them too."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def error_json(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, object] | None = None,
) -> web.Response:
    """`{"error": {"code", "message"}, ...details}` with `status`: every error FlagMeter answers."""
    return json_response({"error": {"code": code, "message": message}, **(details or {})}, status, headers)
