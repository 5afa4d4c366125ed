"""A small JSON-over-HTTP client for teachers behind OpenAI-compatible endpoints (standard library only).

Bounded in every direction: a timeout per request, a fixed number of retries with exponential
backoff (or the server's ``Retry-After``, capped), and an optional rate limit (a minimum interval
between request starts). The API key is read by the caller from an environment variable and held
only in the request header: it is never part of ``repr``, of an error message (any echo of it in a
server's answer is masked) or of anything kdlens writes.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["JSONClient", "public_url", "RETRY_STATUS"]

#: answers worth another attempt: timeouts, conflicts, rate limiting, server errors
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 60.0


def public_url(url: str) -> str:
    """``url`` without credentials, query or fragment (what may appear in logs, ids and manifests)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class JSONClient:
    """POST JSON to one endpoint and return the decoded JSON answer.

    Parameters
    ----------
    url : str
        Full endpoint, e.g. ``"http://127.0.0.1:8000/v1/completions"`` (http or https).
    api_key : str or None
        Sent as ``Authorization: Bearer ...`` when given.
    timeout : float
        Seconds per request (connect and read), > 0.
    retries : int
        Extra attempts after a connection error, a timeout or a 408/409/429/5xx answer.
    requests_per_second : float
        At most this many request starts per second (0: no limit); retries count.
    what : str
        How errors name the endpoint's user (``"black-box teacher"``, ``"logprob teacher"``).
    hint : str
        Appended to the error raised when every attempt failed (e.g. which config key to check).
    sleep, clock : callables
        ``time.sleep`` and ``time.monotonic`` (tests pass fakes).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 2,
                 requests_per_second: float = 0.0, what: str = "teacher", hint: str = "",
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{what} url {public_url(url) or url!r} must start with http:// or https://")
        if not timeout > 0 or retries < 0 or requests_per_second < 0:
            raise ValueError(f"{what}: need timeout > 0, retries >= 0 and requests_per_second >= 0")
        self.url, self.public = url, public_url(url)
        self.timeout, self.retries, self.what, self.hint = float(timeout), int(retries), what, hint
        self.min_interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._key = api_key
        self._sleep, self._clock = sleep, clock
        self._last_start: float | None = None
        self.n_requests = 0

    def __repr__(self) -> str:
        return f"JSONClient({self.public!r}, key={'set' if self._key else 'none'})"

    def _mask(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _throttle(self) -> None:
        if self.min_interval and self._last_start is not None:
            wait = self._last_start + self.min_interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_start = self._clock()

    def post(self, body: dict[str, Any]) -> Any:
        """POST ``body``; return the decoded JSON answer.

        Raises
        ------
        RuntimeError
            A non-retryable HTTP error (status and the answer's first 300 characters), or every
            attempt failed (the last error, and ``hint``).
        ValueError
            The answer is not JSON.
        """
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last: str = ""
        delay = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(delay)
            delay = 0.5 * 2 ** attempt
            self._throttle()
            self.n_requests += 1
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                detail = self._mask(err.read()[:300].decode(errors="replace"))
                if err.code not in RETRY_STATUS:
                    raise ConnectionError(f"{self.what} at {self.public} answered HTTP {err.code}: {detail}") from None
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), _MAX_RETRY_AFTER)
                last = f"HTTP {err.code}: {detail}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                last = self._mask(str(getattr(err, "reason", err)) or type(err).__name__)
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise ValueError(f"{self.what} at {self.public} did not answer JSON: "
                                 f"{self._mask(raw[:300].decode(errors='replace'))!r}") from None
        raise ConnectionError(f"{self.what} at {self.public} failed after {self.retries + 1} attempts (last error: "
                           f"{last}){'; ' + self.hint if self.hint else ''}")
