"""Markdown tables, the one way every report writes them."""

from __future__ import annotations


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its rule, then one line per row of cells (already text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
