"""Chat-format fields: a list of turns whose texts are translated as segments of the record.

A chat field holds turns as HF/OpenAI ``{"role": ..., "content": "..."}`` or ShareGPT
``{"from": ..., "value": "..."}`` objects. Each turn's text is one *segment*, keyed
``FIELD[i]`` (0-based turn index); a plain string field is one segment keyed by its name. The
pipeline joins, validates, protects, checks and falls back on segments, so a turn behaves exactly
like a field; everything else in a turn (role, name, tool calls …) is copied untouched. A turn
whose text is ``null`` (an assistant turn that only calls a tool) is kept as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

#: Keys that hold a turn's text, in the order they are looked up (HF/OpenAI, then ShareGPT).
TEXT_KEYS = ("content", "value")


def shown(v: object, n: int = 40) -> str:
    """``v`` as JSON for an error message, cut to ``n`` characters."""
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


def text_key(turn: dict) -> str | None:
    """The key holding ``turn``'s text (``content`` or ``value``), or ``None``."""
    return next((k for k in TEXT_KEYS if k in turn), None)


def check_turns(value: list, field_name: str) -> str | None:
    """``None`` if ``value`` is a list of chat turns; else why not (a message naming the item and the fix)."""
    fix = (
        'fix: give turns as {"role": "user", "content": "..."} (or ShareGPT {"from": "human", "value": "..."}), '
        "or leave the field out of --fields"
    )
    for i, turn in enumerate(value, start=1):
        where = f"field {field_name!r} item {i}"
        if not isinstance(turn, dict):
            return f"{where} is a {type(turn).__name__} ({shown(turn)}), not a turn object; {fix}"
        key = text_key(turn)
        if key is None:
            return f"{where} has no 'content' (nor 'value') key: {shown(turn)}; {fix}"
        if turn[key] is not None and not isinstance(turn[key], str):
            return f"{where}'s {key!r} is a {type(turn[key]).__name__} ({shown(turn[key])}), not a string; {fix}"
    return None


def segments(record: Mapping, fields: list[str]) -> Iterator[tuple[str, str, str]]:
    """``(field, key, text)`` of every segment of ``record`` on ``fields``, in joint-sequence order.

    A string field is one segment keyed by its name; a chat field gives one per turn with a string
    text, keyed ``FIELD[i]``. Absent/``null`` fields and ``null`` turn texts give none.
    """
    for f in fields:
        v = record.get(f)
        if isinstance(v, str):
            yield f, f, v
        elif isinstance(v, list):
            for i, turn in enumerate(v):
                key = text_key(turn) if isinstance(turn, dict) else None
                if key is not None and isinstance(turn[key], str):
                    yield f, f"{f}[{i}]", turn[key]


def flat_texts(values: Mapping[str, object]) -> dict[str, str]:
    """``{segment key: text}`` of a ``{field: str | chat list}`` mapping (``_source``, translations)."""
    return {k: t for _, k, t in segments(values, list(values))}


def rebuild(value: str | list, field_name: str, texts: Mapping[str, str]) -> str | list:
    """``value`` (a string field or a chat list) with its segments' texts replaced from ``texts``.

    Segments missing from ``texts`` keep their text; a chat list is copied turn by turn (the
    input record is never modified).
    """
    if isinstance(value, str):
        return texts.get(field_name, value)
    out = []
    for i, turn in enumerate(value):
        key = f"{field_name}[{i}]"
        if key in texts:
            turn = {**turn, text_key(turn): texts[key]}
        else:
            turn = dict(turn)
        out.append(turn)
    return out
