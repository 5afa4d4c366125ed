"""The ``endpoint`` section of a run config: a teacher served over HTTP that returns log-probabilities."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["EndpointConfig", "REPORT_TO"]

#: experiment trackers a run can log to (``report_to=``); ``train_log.jsonl`` is always written
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


@dataclass
class EndpointConfig:
    """Where ``teacher_source=endpoint`` reads the teacher's top-k log-probabilities.

    Parameters
    ----------
    url : str or None
        Base URL of an OpenAI-compatible API (``POST {url}/completions`` with ``echo`` and
        ``logprobs``; see :mod:`kdlens.teacher_endpoint` for which servers can). No credentials or
        query string: the config is written into the run directory.
    model : str
        ``model`` field of each request.
    api_key_env : str or None
        Name of the environment variable holding the API key (sent as a Bearer token when set and
        non-empty). The key itself is never part of the config.
    timeout : float
        Seconds per request (> 0).
    retries : int
        Extra attempts on connection errors, timeouts and 408/409/429/5xx answers (>= 0).
    requests_per_second : float
        Rate limit of request starts (0 = none).
    """

    url: str | None = None
    model: str = "teacher"
    api_key_env: str | None = "KDLENS_TEACHER_API_KEY"
    timeout: float = 60.0
    retries: int = 2
    requests_per_second: float = 0.0

    def __post_init__(self) -> None:
        if self.url is not None:
            parts = urllib.parse.urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint.url must be http(s)://HOST[:PORT]/PATH, got {self.url!r}")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError("endpoint.url must not carry credentials, a query or a fragment (the config is written "
                                 "into the run directory); put the key in the environment variable named by "
                                 "endpoint.api_key_env")
        if not self.timeout > 0 or self.retries < 0 or self.requests_per_second < 0:
            raise ValueError(f"endpoint: need timeout > 0, retries >= 0 and requests_per_second >= 0, got "
                             f"{self.timeout}, {self.retries}, {self.requests_per_second}")
