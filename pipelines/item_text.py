"""The one rendering of an item as text, used for content embeddings and LM prompts."""

from __future__ import annotations

from collections.abc import Sequence


def render_item_text(
    title: str | None,
    categories: Sequence[str] | None = None,
    description: str | None = None,
    max_chars: int = 400,
) -> str:
    """`Title (genres: A, B). Description`, cut to `max_chars` at a word boundary."""
    parts = [title.strip() if title else "untitled"]
    cats = [c for c in (categories or []) if c]
    if cats:
        parts[0] += f" (genres: {', '.join(cats)})"
    if description and description.strip():
        parts.append(description.strip())
    text = ". ".join(parts)
    if len(text) > max_chars:
        cut = text[:max_chars].rsplit(" ", 1)[0]
        text = cut.rstrip(" ,.;:") + "…"
    return text
