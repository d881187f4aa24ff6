"""The prompt record every data source produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One training or evaluation prompt.

    ``category`` drives non-iid partitioning and per-category reports (None when the source has
    no category field); ``source`` says where the record came from (file:row) for error messages.
    ``extra`` keeps further record fields as (name, value) pairs: a file source stores the
    ``data.partition.field`` there when it differs from ``data.category_field``, so clients can be
    grouped by another label than the one reported per category.
    """

    text: str
    category: str | None = None
    source: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    def extra_value(self, name: str) -> str | None:
        """The value of extra field ``name``, or None when the prompt does not carry it."""
        for key, value in self.extra:
            if key == name:
                return value
        return None
