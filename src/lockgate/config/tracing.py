"""``tracing:``: OpenTelemetry spans of mints, requests and statements (off by default)."""

from __future__ import annotations

from pydantic import Field

from lockgate.config._base import Section


class TracingSettings(Section):
    enabled: bool = Field(default=False, description="record spans (see docs/tracing.md)")
