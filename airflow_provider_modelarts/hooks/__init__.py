"""Hooks of Huawei Cloud ModelArts (:mod:`.modelarts`, :mod:`.modelarts_async`) and SMN (:mod:`.smn`)."""

from __future__ import annotations

__all__: list[str] = []
