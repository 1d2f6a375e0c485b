"""What every configuration section shares: a frozen model that refuses unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Names of deployments, resources and credentials: safe in URLs, metric labels and logs.
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class Section(BaseModel):
    """A configuration section: a misspelt field is an error, and nothing changes it later."""

    model_config = ConfigDict(extra="forbid", frozen=True)
