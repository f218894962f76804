"""Settings of the ``modelarts`` Airflow connection."""

from __future__ import annotations

__all__ = ["DEFAULT_CONN_ID"]

#: The connection id every hook, operator, sensor, trigger and notifier uses unless told otherwise.
DEFAULT_CONN_ID = "modelarts_default"
