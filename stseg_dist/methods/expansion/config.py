"""``cells.expansion``: the nucleus expansion's settings (read by :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...settings import not_negative


@dataclass
class ExpansionConfig:
    distance_um: float = 5.0

    def validate(self, key: str, root: object = None) -> None:
        not_negative(self, key, "distance_um")
