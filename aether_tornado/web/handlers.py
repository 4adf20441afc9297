"""What Tornado answers a request that no route takes."""

import orjson

from .headers import SecureHandler, not_found


class NotFound(SecureHandler):
    """A 404 in the JSON shape of every refusal, never Tornado's HTML page."""

    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.set_status(404)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps(not_found(self.request.path)))
