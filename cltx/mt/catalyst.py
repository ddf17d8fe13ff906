"""Catalyst Statements (CS): one English sentence, put before the joint sequence, that tells the MT
system how the record's fields relate. It is translated with the record and dropped afterwards.

The paper did not publish its CS strings. cltx builds one from templates for common record
kinds; each template maps field names to role phrases, and the sentence lists the roles of the
fields a record actually has, in joint-sequence order. A user sentence (``--catalyst TEXT``)
replaces all of this; ``--catalyst none`` sends no CS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SENTENCE = "The following texts belong to one example and refer to each other."


@dataclass(frozen=True)
class Template:
    """A record kind: ``roles`` maps a field name to its role phrase; ``lead`` starts the sentence."""

    kind: str
    roles: dict[str, str] = field(default_factory=dict)
    lead: str = "The following are"

    def sentence(self, fields: list[str]) -> str:
        phrases = [self.roles[f] for f in fields if f in self.roles]
        if not phrases:
            return DEFAULT_SENTENCE
        if len(phrases) == 1:
            listed = phrases[0]
        else:
            listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{self.lead} {listed}."


TEMPLATES: dict[str, Template] = {
    "instruction": Template(
        "instruction",
        {
            "system": "a system message",
            "instruction": "an instruction",
            "prompt": "a request",
            "input": "the input it refers to",
            "output": "the response to it",
            "response": "the response to it",
            # chat fields (cltx.mt.chat): one marker per turn, the field named once
            "messages": "the turns of a conversation",
            "conversations": "the turns of a conversation",
        },
    ),
    "qa": Template(
        "qa",
        {
            "question": "a question",
            "passage": "a passage",
            "context": "a passage",
            "answer": "the answer to the question, quoted from the passage",
        },
    ),
    "nli": Template("nli", {"premise": "a premise", "hypothesis": "a hypothesis about the premise"}),
    "search": Template(
        "search",
        {
            "query": "a search query",
            "title": "the title of a web page found for it",
            "snippet": "a snippet of that page",
        },
    ),
}


def pick_template(fields: list[str]) -> Template | None:
    """The template covering most of ``fields`` (ties: the order of :data:`TEMPLATES`)."""
    best, best_n = None, 0
    for t in TEMPLATES.values():
        n = sum(f in t.roles for f in fields)
        if n > best_n:
            best, best_n = t, n
    return best


def load_catalyst_file(setting: str) -> dict[str, str]:
    """``@FILE``: a JSON object mapping comma-joined field lists to sentences, ``"*"`` for the rest.

    Example: ``{"question,passage,answer": "A question, a passage and its answer follow.", "*": "..."}``.
    Without a ``"*"`` entry, other field combinations get the automatic template.
    """
    import json
    from pathlib import Path

    from cltx.errors import bad_arg

    path = Path(setting[1:])
    if not path.is_file():
        raise bad_arg("--catalyst", setting, f"{path} is not a file; write @path/to/catalyst.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_arg("--catalyst", setting, f"not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise bad_arg("--catalyst", setting, 'the file must hold one JSON object of strings: {"a,b": "sentence"}')
    return {",".join(f.strip() for f in k.split(",")) if k != "*" else k: v for k, v in data.items()}


def check_setting(setting: str) -> None:
    """Raise the user error for a bad ``--catalyst`` now, not at the first record."""
    if setting.startswith("@"):
        load_catalyst_file(setting)
    elif setting.startswith("kind:"):
        catalyst_for([], setting)


def catalyst_for(fields: list[str], setting: str = "auto", table: dict[str, str] | None = None) -> str | None:
    """The CS for a record whose non-empty translated fields are ``fields`` (in join order).

    Args:
        fields: field names, in the order they appear in the joint sequence.
        setting: ``"auto"`` (template by field names), ``"none"`` (no CS), ``"kind:NAME"`` (force a
            template), ``"@FILE"`` (sentences per field list, :func:`load_catalyst_file`; pass the
            loaded ``table`` to avoid re-reading it), or any other text (used verbatim).
        table: the loaded ``@FILE`` mapping.
    """
    if setting.startswith("@"):
        table = table if table is not None else load_catalyst_file(setting)
        key = ",".join(fields)
        if key in table:
            return table[key] or None
        if "*" in table:
            return table["*"] or None
        setting = "auto"
    if setting == "none":
        return None
    if setting == "auto":
        t = pick_template(fields)
        return t.sentence(fields) if t else DEFAULT_SENTENCE
    if setting.startswith("kind:"):
        from cltx.errors import bad_arg

        name = setting[5:]
        if name not in TEMPLATES:
            raise bad_arg("--catalyst", setting, f"unknown kind; choose from {', '.join(TEMPLATES)}")
        return TEMPLATES[name].sentence(fields)
    return setting
