"""What Tornado answers a request that no route takes."""

import orjson

from ..v3.errors import NOT_FOUND
from .headers import SecureHandler


class NotFound(SecureHandler):
    """A 404 in the JSON shape of every refusal, never Tornado's HTML page."""

    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.set_status(404)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps({"code": NOT_FOUND, "field": None, "msg": f"No route for {self.request.path}."}))
