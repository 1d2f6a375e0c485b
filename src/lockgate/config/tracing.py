"""``tracing:``: OpenTelemetry spans of mints, requests and statements (off by default).

The room that makes the spans is :mod:`lockgate.tracing`. The OTLP endpoint is a
collector's OTLP/HTTP URL, https or plain http to this machine (a sidecar collector): the
spans name principals, resources and objects, and the headers often carry an API key.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from lockgate._urls import private_channel
from lockgate.config._base import NAME_RE, Section

# RFC 9110: a field name is a token; a value here printable Latin-1 (http.client sends
# Latin-1), spaces and tabs inside.
_HEADER_NAME = re.compile(r"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE = re.compile(
    r"\A[\x21-\x7e\xa0-\xff](?:[\t\x20-\x7e\xa0-\xff]*[\x21-\x7e\xa0-\xff])?\Z"
)
TRACES_PATH = "/v1/traces"  # the OTLP/HTTP path of spans, appended to a bare collector URL


class TracingSettings(Section):
    enabled: bool = Field(default=False, description="record spans (see docs/tracing.md)")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector URL (https, or http to this machine); "
        f"{TRACES_PATH} is appended to a URL with no path. None: spans are not exported",
    )
    otlp_headers_file: Path | None = Field(
        default=None,
        description="file of 'Name: value' lines sent with every export (API keys); never logged",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="share of traces recorded when the caller's trace is not sampled",
    )
    service_name: str = Field(
        default="lockgate", pattern=NAME_RE, description="the spans' service.name"
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_private(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials: put them in otlp_headers_file")
        if parts.query or parts.fragment:
            raise ValueError("must have no query string or fragment")
        if not private_channel(url):
            raise ValueError(
                "must be https (plain http only to this machine): spans name principals "
                "and objects, and the export headers may carry an API key"
            )
        return url

    @model_validator(mode="after")
    def _exporter_needs_endpoint(self) -> TracingSettings:
        if self.otlp_headers_file is not None and self.otlp_endpoint is None:
            raise ValueError("otlp_headers_file is set but otlp_endpoint is not")
        return self

    def traces_url(self) -> str:
        """Where spans are posted: the endpoint, with ``/v1/traces`` when it has no path."""
        url = self.otlp_endpoint or ""
        if urlsplit(url).path in ("", "/"):
            return url.rstrip("/") + TRACES_PATH
        return url

    def otlp_headers(self) -> dict[str, str]:
        """The export headers from ``otlp_headers_file`` (``Name: value`` per line; blank
        lines and ``#`` comments skipped). ValueError names the line, never its value."""
        if self.otlp_headers_file is None:
            return {}
        headers: dict[str, str] = {}
        lines = self.otlp_headers_file.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
                # What HTTP cannot carry would fail every export: refused at start instead.
                raise ValueError(
                    f"{self.otlp_headers_file}:{number}: expected 'Name: value' (a token "
                    "name, a value of printable Latin-1 characters)"
                )
            headers[name.lower()] = value
        return headers
