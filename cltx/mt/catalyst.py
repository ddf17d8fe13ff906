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


def catalyst_for(fields: list[str], setting: str = "auto") -> str | None:
    """The CS for a record whose non-empty translated fields are ``fields`` (in join order).

    Args:
        fields: field names, in the order they appear in the joint sequence.
        setting: ``"auto"`` (template by field names), ``"none"`` (no CS), ``"kind:NAME"`` (force a
            template), or any other text (used verbatim).
    """
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
