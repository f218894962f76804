"""Archive of training-job task logs: staging, response checks, the copy of one log, records and manifest."""

from __future__ import annotations

__all__: list[str] = []
