"""CLO training data: bilingual records → preference pairs → fixed micro-batches ("bins").

A record holds one example in English and in the target language. The English view and the target
view are each a dict of fields:

* ``cltx mt`` output (the default): the target text in the record's own fields, the English text in
  ``record["_source"]`` (fields that were not translated are the same in both views).
* A bilingual JSONL: ``en_key``/``tgt_key`` name a nested dict per language (``{"en": {...},
  "pt": {...}}``), or ``en_suffix``/``tgt_suffix`` name suffixed fields (``instruction_en``,
  ``instruction_pt``).

Each view gives a prompt (the prompt fields joined by a blank line) and a response. Without flags
the layout is found per record: instruction + input → output, passage + question → answer,
context + question → answer, prompt → response; and chat format: a ``messages`` (HF/OpenAI
``{"role", "content"}`` turns) or ``conversations`` (ShareGPT ``{"from", "value"}``) list gives
one example per *exchange*, a user turn and the assistant turn right after it, with the turns
before it (same language) as the conversation history (``DataSpec.chat_turns``: ``all`` exchanges,
the default, or only the ``first`` or ``last``). System turns are ignored and counted (``--system-prompt``
sets one for every example); consecutive turns of one role are joined (blank line) so roles alternate,
as chat templates require; assistant turns before the first user turn are dropped from the history; the
conversation is read up to its first turn of another role (tool, function) or with a non-string text.
A turn's text may be a list of parts (the OpenAI / HF multimodal format, ``[{"type": "text", "text":
...}, ...]``): text parts are joined in order, as chat templates render them; a part of another type
(image, audio ...) skips the record (``non_text_content``), since its prompt would be incomplete.
A chat record without an exchange, or whose two languages differ in their turns' roles, is skipped
with its reason; an exchange that is unusable (empty or identical responses, a prompt that does not
fit) drops only itself (``exchanges_skipped``), and the record only when it was its last.

Every usable example gives two preference pairs (DESIGN.md §3)::

    prompt  chosen  rejected
    x_en    y_en    y_tg
    x_tg    y_tg    y_en

and both sit in the same micro-batch: a micro-batch ("bin") is a fixed group of whole examples
(a record, or one exchange of a chat record), formed once by a seeded shuffle, so gradient
accumulation and data parallelism only ever move whole examples. Because a bin's tensors never
change, the reference log-probs computed on a bin before training meet exactly the same tensors at
step 0 (rewards exactly zero).

Row layout of a CLO bin of B examples (P = 2B pairs): chosen rows 0…P−1 =
``[x_en+y_en, x_tg+y_tg]`` per example, rejected rows P…2P−1 = ``[x_en+y_tg, x_tg+y_en]`` in the
same order; ``nll_mask`` marks the x_tg pairs (the SFT term is the target-language NLL only). An
SFT bin holds only the P chosen rows with ``nll_mask`` all true.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import numbers
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cltx._validate import check_fields, checked_init
from cltx.errors import CltxError, bad_arg
from cltx.mt.chat import text_key

logger = logging.getLogger(__name__)

IGNORE = -100

# (prompt fields, response field), tried in order when the user names none.
DEFAULT_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("instruction", "input"), "output"),
    (("passage", "question"), "answer"),
    (("context", "question"), "answer"),
    (("prompt",), "response"),
    (("query",), "response"),
)

# Chat-format fields (cltx.mt translates them turn by turn) and the roles that matter, lower-cased.
CHAT_FIELDS = ("messages", "conversations")
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "model", "bot", "chatgpt"})
SYSTEM_ROLES = frozenset({"system"})
_CHAT = "<chat>"  # the response "field" of a chat layout
CHAT_TURNS = ("all", "first", "last")
MIN_MAX_LENGTH = 8  # tokens: the bound CLOConfig.max_length holds `cltx clo` to

SKIP_REASONS = {
    "missing_english": "no English text for the prompt/response fields",
    "missing_target": "no target-language text for the prompt/response fields",
    "mt_failed": "cltx mt marked the translation failed",
    "not_text": "a prompt/response field is not a string",
    "non_text_content": "chat turn with a non-text content part (image, audio ...): only text parts can be used",
    "no_layout": "no known prompt/response fields (pass --prompt-fields/--response-field)",
    "missing_fields": "none of the --prompt-fields, or not the --response-field, in either language "
    "(check the field names)",
    "no_exchange": "chat record without a user turn followed right away by an assistant turn",
    "chat_mismatch": "chat record whose target conversation does not have the English conversation's turns "
    "(roles in the same order)",
    "empty_prompt": "empty prompt",
    "empty_response": "empty response in one language",
    "same_response": "English and target responses are identical (no preference signal)",
    "prompt_too_long": "prompt alone fills max_length",
}


@checked_init
@dataclasses.dataclass
class DataSpec:
    """Where the two languages and the prompt/response live in a record.

    Attributes:
        prompt_fields: fields joined (blank line) into the prompt; None = auto layout per record.
        response_field: the response field; None = auto layout.
        en_key: dict key holding the English view (``_source`` for ``cltx mt`` output).
        tgt_key: dict key holding the target view; None = the record's top level.
        en_suffix / tgt_suffix: alternatively, per-language field suffixes (``_en``, ``_pt``).
        joiner: separator between prompt fields (and between consecutive chat turns of one role).
        chat_turns: which exchanges of a chat record become examples: ``all`` (each with the turns
            before it as history), ``first`` or ``last``.
    """

    prompt_fields: tuple[str, ...] | None = None
    response_field: str | None = None
    en_key: str | None = "_source"
    tgt_key: str | None = None
    en_suffix: str | None = None
    tgt_suffix: str | None = None
    joiner: str = "\n\n"
    chat_turns: str = "all"

    def __post_init__(self) -> None:
        if self.chat_turns not in CHAT_TURNS:
            raise bad_arg("chat_turns", self.chat_turns, f"use one of {', '.join(CHAT_TURNS)}")
        if isinstance(self.prompt_fields, str):
            self.prompt_fields = tuple(f.strip() for f in self.prompt_fields.split(",") if f.strip())
        check_fields(self)
        if (self.prompt_fields is None) != (self.response_field is None):
            raise bad_arg(
                "prompt_fields/response_field",
                (self.prompt_fields, self.response_field),
                "give both (e.g. --prompt-fields instruction,input --response-field output) or neither",
            )
        if self.prompt_fields is not None and not self.prompt_fields:
            raise bad_arg("prompt_fields", self.prompt_fields, "name at least one field")
        if (self.en_suffix is None) != (self.tgt_suffix is None):
            raise bad_arg("en_suffix/tgt_suffix", (self.en_suffix, self.tgt_suffix), "give both suffixes or neither")
        if self.en_suffix is not None and self.en_suffix == self.tgt_suffix:
            raise bad_arg("tgt_suffix", self.tgt_suffix, "must differ from en_suffix")

    def views(self, record: dict) -> tuple[dict | None, dict | None]:
        """Return (English view, target view) of a record; None where that language is absent."""
        if self.en_suffix is not None:
            en = {k[: -len(self.en_suffix)]: v for k, v in record.items() if k.endswith(self.en_suffix)}
            tg = {k[: -len(self.tgt_suffix)]: v for k, v in record.items() if k.endswith(self.tgt_suffix)}
            return en or None, tg or None
        tg = record if self.tgt_key is None else record.get(self.tgt_key)
        if tg is not None and not isinstance(tg, dict):
            tg = None
        if self.tgt_key is None:
            tg = {k: v for k, v in record.items() if not k.startswith("_")}
        en_part = record.get(self.en_key) if self.en_key else None
        if not isinstance(en_part, dict) or not en_part:
            return None, tg
        # Fields that cltx mt did not translate are the same text in both languages.
        en = {**tg, **en_part} if (self.tgt_key is None and tg) else dict(en_part)
        return en, tg


@dataclasses.dataclass
class Example:
    """One usable example: the prompt and response in both languages.

    ``index``: the record's number. Chat records: ``turn`` is the response turn's position in the
    conversation, ``history_*`` the turns before the prompt as ``(role, text)`` pairs (roles
    ``user``/``assistant``, alternating, starting with ``user``); other records: ``None`` and ``()``.
    """

    index: int
    prompt_en: str
    prompt_tg: str
    response_en: str
    response_tg: str
    turn: int | None = None
    history_en: tuple[tuple[str, str], ...] = ()
    history_tg: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        """Identifies the example: (record, response turn; -1 for non-chat records)."""
        return self.index, -1 if self.turn is None else self.turn


@dataclasses.dataclass
class DataReport:
    """What happened to each input record (skips are counted per reason, never silent)."""

    records: int = 0
    used: int = 0  # records that give at least one example
    examples: int = 0  # examples (a chat record gives one per exchange)
    skipped: Counter = dataclasses.field(default_factory=Counter)
    skipped_examples: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    truncated_responses: int = 0
    system_turns_ignored: int = 0  # chat records: system turns in the conversations used (English side)
    exchanges_skipped: Counter = dataclasses.field(default_factory=Counter)  # chat: per reason, in used records
    histories_trimmed: int = 0  # chat examples whose oldest turns were left out to fit max_length
    lines: list[int] | None = None  # file line of each record; None: record numbers
    # chat: record → reasons of its exchanges counted in exchanges_skipped (for when the record is
    # skipped later, by max_length: then they are no longer exchanges of a used record)
    exchange_problems: dict[int, list[str]] = dataclasses.field(default_factory=dict, repr=False)

    def line(self, index: int) -> int:
        return self.lines[index] if self.lines is not None else index + 1

    def skip(self, reason: str, index: int) -> None:
        self.skipped[reason] += 1
        self.skipped_examples.setdefault(reason, [])
        if len(self.skipped_examples[reason]) < 5:
            self.skipped_examples[reason].append(index)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "used": self.used,
            "examples": self.examples,
            "skipped": dict(self.skipped),
            "skipped_first_lines": {k: [self.line(i) for i in v] for k, v in self.skipped_examples.items()},
            "truncated_responses": self.truncated_responses,
            "system_turns_ignored": self.system_turns_ignored,
            "exchanges_skipped": dict(self.exchanges_skipped),
            "histories_trimmed": self.histories_trimmed,
        }


def read_records(path: str | Path, *, argument: str = "data") -> list[dict]:
    """Read a JSONL file (or a JSON array). Malformed lines are errors naming file and line."""
    return read_records_with_lines(path, argument=argument)[0]


def read_records_with_lines(path: str | Path, *, argument: str = "data") -> tuple[list[dict], list[int]]:
    """Read a JSONL file (or a JSON array): the records and the file line of each (a JSON array:
    the record numbers). Blank lines are skipped; a UTF-8 byte-order mark is accepted; malformed
    lines, non-UTF-8 bytes and a file without records are errors naming the file (and line).

    The file is a JSON array only when the whole of it parses as one; otherwise it is JSONL, so a
    JSONL whose first line is an array (``[1, 2]``) is an error naming line 1, not a whole-file
    "not valid JSON". A file that opens with ``[`` on a line that is no JSON by itself (a
    pretty-printed array) and does not parse is reported as a broken JSON array."""
    p = Path(path)
    if p.is_dir():
        raise bad_arg(argument, str(path), "is a folder; pass the JSONL file written by `cltx mt` or a bilingual JSONL")
    if not p.is_file():
        raise bad_arg(argument, str(path), "no such file; pass the JSONL written by `cltx mt` or a bilingual JSONL")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CltxError(
            f"{argument}={str(path)!r} line {line}: not UTF-8 text (byte {e.start}); fix: save the file as UTF-8 JSONL"
        ) from e
    rows = _json_array(text, path, argument) if text.lstrip().startswith("[") else None
    if rows is not None:
        lines, what = list(range(1, len(rows) + 1)), "record"
    else:
        rows, lines, what = [], [], "line"
        # JSONL lines end at "\n" only: str.splitlines also splits at U+2028/U+2029/U+0085 and form
        # feeds, which JSON strings may hold raw (json.dumps(ensure_ascii=False) writes them so)
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CltxError(
                    f"{argument}={str(path)!r} line {n}: not valid JSON ({e.msg}); fix: repair that line"
                ) from e
            lines.append(n)
    for n, row in zip(lines, rows, strict=True):
        if not isinstance(row, dict):
            raise CltxError(
                f"{argument}={str(path)!r} {what} {n}: expected a JSON object, got {type(row).__name__}; "
                "fix: one JSON object per line"
            )
    if not rows:
        raise bad_arg(argument, str(path), "holds no records; pass the JSONL written by `cltx mt` or a bilingual JSONL")
    return rows, lines


def _json_array(text: str, path, argument: str) -> list | None:
    """The records of a file that opens with ``[``: the array when the whole text is one, None when it
    is JSONL (its first line is JSON by itself), else the whole-file JSON error."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        first = next(line for line in text.split("\n") if line.strip())
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise CltxError(f"{argument}={str(path)!r}: not valid JSON ({e}); fix: repair the file") from e
        return None
    return rows if isinstance(rows, list) else None


def _layout(view: dict, spec: DataSpec) -> tuple[tuple[str, ...], str] | None:
    if spec.prompt_fields is not None:
        return spec.prompt_fields, spec.response_field
    for prompt_fields, response in DEFAULT_LAYOUTS:
        if response in view and any(f in view for f in prompt_fields):
            return prompt_fields, response
    for f in CHAT_FIELDS:
        if isinstance(view.get(f), list):
            return (f,), _CHAT
    return None


@dataclasses.dataclass
class _Chat:
    """A conversation read for CLO: its roles (every turn, lower-cased), its exchanges and system turns."""

    roles: list[str]
    exchanges: list[tuple[int, tuple[tuple[str, str], ...], str, str]]  # (response turn, history, prompt, response)
    system_turns: int


_NON_TEXT = object()  # a turn's content holds a part that is not text (an image, audio ...)


def _turn_text(turn: dict) -> str | object | None:
    """A turn's text: its string, or the text parts of a content list joined in order (how HF chat
    templates render ``[{"type": "text", "text": ...}]``); ``_NON_TEXT`` when a part has another type;
    None when there is no usable text (a tool call's ``null``, a malformed part)."""
    text = turn.get(text_key(turn))
    if isinstance(text, str) or not isinstance(text, list):
        return text if isinstance(text, str) else None
    if any(isinstance(p, dict) and p.get("type", "text") != "text" for p in text):
        return _NON_TEXT
    if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in text):
        return None
    return "".join(p["text"] for p in text)


def _chat(turns: object, joiner: str) -> _Chat | str:
    """The exchanges of a conversation (see the module docstring), or a skip reason.

    Turns are ``{"role", "content"}`` or ShareGPT ``{"from", "value"}`` objects; a text is a string or
    a list of text parts (:func:`_turn_text`). Reading stops at the first turn of a role other than
    user/assistant/system or whose text is not a string (a tool call's ``null``); a conversation that
    stops that way before its first exchange is ``not_text``. A read turn with a non-text part (an
    image) makes the conversation ``non_text_content``.
    """
    if turns is None:
        return "missing"
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return "not_text"
    roles = [str(t.get("role", t.get("from", ""))).lower() for t in turns]
    merged: list[list] = []  # [role, [texts], last turn index], consecutive turns of one role joined
    exchanges, system, stopped = [], 0, False
    for i, (role, turn) in enumerate(zip(roles, turns, strict=True)):
        if role in SYSTEM_ROLES:
            system += 1
            continue
        kind = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else None
        text = _turn_text(turn) if kind is not None else None
        if text is _NON_TEXT:
            return "non_text_content"
        if kind is None or not isinstance(text, str):
            stopped = kind is not None
            break
        if merged and merged[-1][0] == kind:
            merged[-1][1].append(text.strip())
            merged[-1][2] = i
        else:
            merged.append([kind, [text.strip()], i])
    for j in range(1, len(merged)):
        if merged[j][0] == "assistant" and merged[j - 1][0] == "user":
            history = [(r, joiner.join(t)) for r, t, _ in merged[: j - 1]]
            while history and history[0][0] != "user":  # templates want the user to speak first
                history.pop(0)
            user, reply = (joiner.join(merged[x][1]) for x in (j - 1, j))
            exchanges.append((merged[j][2], tuple(history), user, reply))
    if not exchanges:
        return "not_text" if stopped else "no_exchange"
    return _Chat(roles, exchanges, system)


def _prompt_response(view: dict, layout, spec: DataSpec) -> tuple[str, str] | str:
    prompt_fields, response_field = layout
    parts = []
    for f in prompt_fields:
        v = view.get(f)
        if v is None:
            continue
        if not isinstance(v, str):
            return "not_text"
        if v.strip():
            parts.append(v.strip())
    resp = view.get(response_field)
    if resp is None:
        return "missing"
    if not isinstance(resp, str):
        return "not_text"
    return spec.joiner.join(parts), resp.strip()


def build_examples(
    records: list[dict], spec: DataSpec | None = None, *, lines: list[int] | None = None
) -> tuple[list[Example], DataReport]:
    """Turn records into bilingual examples, counting every skipped record by reason.

    ``lines``: the file line of each record (:func:`read_records_with_lines`), so the report names
    real lines; default: record numbers."""
    spec = spec or DataSpec()
    if lines is not None and len(lines) != len(records):
        raise bad_arg("lines", len(lines), f"must give one line per record ({len(records)})")
    report = DataReport(records=len(records), lines=list(lines) if lines is not None else None)
    out: list[Example] = []
    for i, rec in enumerate(records):
        mt = rec.get("_mt")
        if isinstance(mt, dict) and str(mt.get("status", "")).lower() == "failed":
            report.skip("mt_failed", i)
            continue
        en, tg = spec.views(rec)
        if en is None:
            report.skip("missing_english", i)
            continue
        if tg is None:
            report.skip("missing_target", i)
            continue
        layout = _layout(en, spec)
        if layout is None:
            report.skip("no_layout", i)
            continue
        if layout[1] == _CHAT:
            _chat_examples(i, en.get(layout[0][0]), tg.get(layout[0][0]), spec, report, out)
            continue
        if spec.prompt_fields is not None and not (_has_fields(en, layout) or _has_fields(tg, layout)):
            report.skip("missing_fields", i)  # a misspelt field name, not a missing language
            continue
        pe = _prompt_response(en, layout, spec)
        pt = _prompt_response(tg, layout, spec)
        reason = _pair_problem(pe, pt)
        if reason:
            report.skip(reason, i)
            continue
        (x_en, y_en), (x_tg, y_tg) = pe, pt
        out.append(Example(i, x_en, x_tg, y_en, y_tg))
    report.used = len({e.index for e in out})
    report.examples = len(out)
    return out, report


def _has_fields(view: dict, layout) -> bool:
    """Whether ``view`` holds the layout's response field and at least one of its prompt fields."""
    prompt_fields, response_field = layout
    return response_field in view and any(f in view for f in prompt_fields)


def _pair_problem(pe, pt) -> str | None:
    """Why a prompt/response pair in both languages gives no example (None: it does)."""
    if pe == "not_text" or pt == "not_text":
        return "not_text"
    if pe == "missing":
        return "missing_english"
    if pt == "missing":
        return "missing_target"
    (x_en, y_en), (x_tg, y_tg) = pe, pt
    if not x_en or not x_tg:
        return "empty_prompt"
    if not y_en or not y_tg:
        return "empty_response"
    if y_en == y_tg:
        return "same_response"
    return None


def _chat_examples(i: int, en_turns, tg_turns, spec: DataSpec, report: DataReport, out: list[Example]) -> None:
    """Append the examples of chat record ``i`` (both languages' conversations) to ``out``, or count its skip."""
    ce, ct = _chat(en_turns, spec.joiner), _chat(tg_turns, spec.joiner)
    if ce == "no_exchange":
        report.skip("no_exchange", i)
        return
    differ = isinstance(ct, _Chat) and (ct.roles, len(ct.exchanges)) != (ce.roles, len(ce.exchanges))
    if isinstance(ce, _Chat) and (ct == "no_exchange" or differ):
        report.skip("chat_mismatch", i)
        return
    if "non_text_content" in (ce, ct):
        report.skip("non_text_content", i)
        return
    if not isinstance(ce, _Chat) or not isinstance(ct, _Chat):
        report.skip(_pair_problem(ce, ct) or "not_text", i)
        return
    pairs = list(zip(ce.exchanges, ct.exchanges, strict=True))
    if spec.chat_turns != "all":
        pairs = pairs[:1] if spec.chat_turns == "first" else pairs[-1:]
    made, problems = [], []
    for (turn, he, x_en, y_en), (_, ht, x_tg, y_tg) in pairs:
        reason = _pair_problem((x_en, y_en), (x_tg, y_tg))
        if reason:
            problems.append(reason)
        else:
            made.append(Example(i, x_en, x_tg, y_en, y_tg, turn=turn, history_en=he, history_tg=ht))
    if not made:
        report.skip(problems[0], i)
        return
    report.exchanges_skipped.update(problems)
    if problems:
        report.exchange_problems[i] = problems
    report.system_turns_ignored += ce.system_turns
    out.extend(made)


def target_language(records: list[dict]) -> str | None:
    """The target-language code cltx mt recorded (``_mt.tgt``), if any."""
    for rec in records:
        mt = rec.get("_mt")
        if isinstance(mt, dict):
            for k in ("tgt", "target", "tgt_lang"):
                if isinstance(mt.get(k), str):
                    return mt[k]
    return None


History = tuple[tuple[str, str], ...]  # earlier chat turns: (role, text), roles user/assistant


class PromptFormatter:
    """Token ids of prompts and responses: the model's chat template where it has one.

    With a chat template, the prompt is the user turn plus the generation prompt, and the response
    is what the template adds for the assistant turn (so it ends with the template's end-of-turn
    tokens). Without one, the prompt is the text plus a newline (with BOS where the tokenizer adds
    it) and the response ends with EOS.

    Templates render in non-thinking mode (``enable_thinking=False``; templates without the flag
    ignore it): CLO data are answers without reasoning, and Qwen3's template otherwise puts an empty
    ``<think></think>`` block at the start of every trained response and asks eval prompts to think.
    """

    def __init__(self, tokenizer, *, use_chat_template: bool | None = None, system_prompt: str | None = None):
        self.tok = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise bad_arg("chat_template", True, "this tokenizer has no chat template; drop the option")
        self.chat = has_template if use_chat_template is None else use_chat_template
        self.system_prompt = system_prompt
        if system_prompt and not self.chat:  # the plain prompt has no place for it: it would be dropped
            why = "--no-chat-template was given" if has_template else "this tokenizer has no chat template"
            raise bad_arg(
                "system_prompt",
                system_prompt,
                f"a system message needs a chat template, and {why}; "
                "fix: drop --system-prompt, or write the instruction into the prompts",
            )
        if not self.chat and tokenizer.eos_token_id is None:
            raise bad_arg("model", getattr(tokenizer, "name_or_path", "?"), "its tokenizer has no EOS token")
        if self.chat:
            self._check_template()

    def _check_template(self) -> None:
        """Render one exchange now: a template that refuses it (Gemma's and Mistral's raise on a
        system message) is a named option with a fix, not a jinja2 traceback from tokenisation."""
        from jinja2 import TemplateError

        exchange = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
        try:
            self._render(exchange)
        except TemplateError as e:
            raise bad_arg(
                "chat_template",
                getattr(self.tok, "name_or_path", "?"),
                f"the tokenizer's chat template fails on a user/assistant exchange ({e}); "
                "fix: --no-chat-template (use_chat_template=False)",
            ) from e
        if self.system_prompt:
            try:
                self._render(self._messages("?") + exchange[1:])
            except TemplateError as e:
                raise bad_arg(
                    "system_prompt",
                    self.system_prompt,
                    f"this model's chat template has no system role (it says: {e}); "
                    "fix: drop --system-prompt, or write the instruction into the prompts",
                ) from e

    @property
    def template_id(self) -> str:
        """What the cache key needs to know about the formatting."""
        t = self.tok.chat_template if self.chat else "plain"
        return hashlib.sha256(f"{t}|{self.system_prompt}".encode()).hexdigest()[:16]

    def _render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        return self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
        )

    def _messages(self, prompt: str, history: History = ()) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs += [{"role": role, "content": text} for role, text in history]
        return msgs + [{"role": "user", "content": prompt}]

    def prompt_text(self, prompt: str, history: History = ()) -> str:
        """The prompt as text: with a chat template, the conversation (``history``: earlier
        ``(role, text)`` turns) up to the user's ``prompt`` plus the generation prompt; without one,
        the turns' texts joined by a blank line, and a newline."""
        if self.chat:
            return self._render(self._messages(prompt, history), add_generation_prompt=True)
        return "\n\n".join([text for _, text in history] + [prompt]) + "\n"

    def prompt_ids(self, prompt: str, history: History = ()) -> list[int]:
        if self.chat:
            return list(self.tok(self.prompt_text(prompt, history), add_special_tokens=False)["input_ids"])
        ids = list(self.tok(self.prompt_text(prompt, history), add_special_tokens=True)["input_ids"])
        # BOS where the tokenizer adds it, but not an EOS it appends (Llama's add_eos_token=True):
        # the answer follows the prompt, not the end of a text
        if len(ids) > 1 and ids[-1] == self.tok.eos_token_id:
            ids.pop()
        return ids

    def response_ids(self, prompt: str, response: str, history: History = ()) -> list[int]:
        if self.chat:
            head = self.prompt_text(prompt, history)
            full = self._render(self._messages(prompt, history) + [{"role": "assistant", "content": response}])
            tail = full[len(head) :] if full.startswith(head) else response + (self.tok.eos_token or "")
            return list(self.tok(tail, add_special_tokens=False)["input_ids"])
        return list(self.tok(response, add_special_tokens=False)["input_ids"]) + [self.tok.eos_token_id]

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS and, with a chat template, the special tokens the template
        puts after an assistant answer (ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``, Phi-3's
        ``<|end|>``): the tokens :meth:`response_ids` trains a model to end with, which are not always
        its EOS (Qwen2.5 base: ``<|endoftext|>``; Gemma instruct: ``<eos>``)."""
        ids = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        if self.chat:
            answer = "Yes"
            content = list(self.tok(answer, add_special_tokens=False)["input_ids"])
            tail, n = self.response_ids("?", answer), len(content)
            after = next((i + n for i in range(len(tail) - n + 1) if tail[i : i + n] == content), None)
            if after is None:  # the template rewrote the answer: no trailer to read
                logger.debug("chat template: answer not found in its rendering; stopping at EOS only")
            else:
                special = set(self.tok.all_special_ids)
                ids += [t for t in tail[after:] if t in special]
        return list(dict.fromkeys(ids))


def _sequence(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    """input ids and aligned labels: label[t] = the token position t predicts, response only."""
    ids = prompt + response
    labels = [IGNORE] * len(ids)
    for t in range(len(prompt) - 1, len(ids) - 1):
        labels[t] = ids[t + 1]
    return ids, labels


@dataclasses.dataclass
class TokenizedExample:
    index: int
    prompt_en: list[int]
    prompt_tg: list[int]
    response_en: list[int]
    response_tg: list[int]
    turn: int | None = None
    history_turns: int | None = None  # chat: the earlier turns kept in the prompt (after trimming); else None

    @property
    def key(self) -> tuple[int, int]:
        """The :attr:`Example.key` of the example it was made from."""
        return self.index, -1 if self.turn is None else self.turn


def tokenize_examples(
    examples: list[Example],
    fmt: PromptFormatter,
    max_length: int,
    report: DataReport,
    *,
    drop: Mapping[tuple[int, int], int] | None = None,
) -> list[TokenizedExample]:
    """Token ids per example. A chat example whose conversation does not fit ``max_length`` loses its
    oldest exchanges first (counted: ``histories_trimmed``), in both languages alike, until prompt and
    response fit or no history is left; then an example whose prompt alone fills ``max_length`` is
    skipped (counted) and responses longer than the room left are truncated (counted).

    ``drop``: per :attr:`Example.key`, the fewest oldest exchanges to leave out before fitting (``cltx
    eval`` asks every model the history that fits all of them); the kept turns are ``history_turns``."""
    out = []
    lost: Counter = Counter()  # record → examples skipped here
    for ex in examples:
        first = 2 * (drop or {}).get(ex.key, 0)  # one user + assistant pair per exchange
        he, ht, trimmed = ex.history_en[first:], ex.history_tg[first:], first > 0
        while True:
            pe, pt = fmt.prompt_ids(ex.prompt_en, he), fmt.prompt_ids(ex.prompt_tg, ht)
            re_ = fmt.response_ids(ex.prompt_en, ex.response_en, he)
            rt = fmt.response_ids(ex.prompt_tg, ex.response_tg, ht)
            if not he or max(len(pe), len(pt)) + max(len(re_), len(rt)) <= max_length:
                break
            he, ht, trimmed = he[2:], ht[2:], True  # one user + assistant pair, oldest first
        report.histories_trimmed += trimmed
        if max(len(pe), len(pt)) >= max_length:
            lost[ex.index] += 1
            continue
        room = max_length - max(len(pe), len(pt))
        if len(re_) > room or len(rt) > room:
            report.truncated_responses += 1
            re_, rt = re_[:room], rt[:room]
        out.append(TokenizedExample(ex.index, pe, pt, re_, rt, ex.turn, None if ex.turn is None else len(he)))
    kept = {t.index for t in out}
    for index, n in lost.items():
        if index in kept:  # the record still gives examples: count the exchanges
            report.exchanges_skipped["prompt_too_long"] += n
        else:  # the whole record is skipped: its other unusable exchanges are no longer counted apart
            report.skip("prompt_too_long", index)
            report.exchanges_skipped.subtract(report.exchange_problems.pop(index, []))
    report.exchanges_skipped = +report.exchanges_skipped  # drop the reasons that fell to zero
    report.used = len(kept)
    report.examples = len(out)
    return out


def check_max_length(value: object, *, argument: str = "max_length") -> None:
    """Refuse a ``max_length`` (prompt + response tokens) that cannot hold an example: not a whole
    number, or under :data:`MIN_MAX_LENGTH` (0 or a negative one left every record ``prompt_too_long``,
    reported as unusable data rather than as the option's mistake). ``cltx clo`` holds
    ``CLOConfig.max_length`` to the same bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < MIN_MAX_LENGTH:
        raise bad_arg(
            argument,
            value,
            f"must be a whole number of tokens ≥ {MIN_MAX_LENGTH} (prompt + response); "
            "fix: pass e.g. --max-length 1024 (a value above the model's context is capped to it)",
        )


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int, multiple: int):
    import torch

    n = max(len(ids) for ids, _ in rows)
    if multiple > 1:
        n = -(-n // multiple) * multiple
    input_ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(ids)] = 1
    return input_ids, labels, mask


def make_bin(group: list[TokenizedExample], method: str, pad_id: int, pad_multiple: int = 8) -> dict:
    """Collate whole records into one micro-batch (see the module docstring for the row layout)."""
    import torch

    chosen, rejected, nll = [], [], []
    for ex in group:
        chosen += [_sequence(ex.prompt_en, ex.response_en), _sequence(ex.prompt_tg, ex.response_tg)]
        rejected += [_sequence(ex.prompt_en, ex.response_tg), _sequence(ex.prompt_tg, ex.response_en)]
        nll += [False, True]
    if method == "sft":
        rows, nll_mask = chosen, [True] * len(chosen)
    else:
        rows, nll_mask = chosen + rejected, nll
    input_ids, labels, mask = _pad(rows, pad_id, pad_multiple)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "nll_mask": torch.tensor(nll_mask, dtype=torch.bool),
        "record_index": torch.tensor([ex.index for ex in group], dtype=torch.long),
    }


def make_bins(
    tokenized: list[TokenizedExample],
    records_per_bin: int,
    method: str,
    pad_id: int,
    *,
    seed: int = 0,
    pad_multiple: int = 8,
) -> list[dict]:
    """Group whole records into fixed micro-batches after one seeded shuffle."""
    if records_per_bin < 1:
        raise bad_arg("batch_size", records_per_bin, "must be ≥ 1 (records per micro-batch)")
    order = list(range(len(tokenized)))
    random.Random(seed).shuffle(order)
    groups = [order[i : i + records_per_bin] for i in range(0, len(order), records_per_bin)]
    return [make_bin([tokenized[j] for j in g], method, pad_id, pad_multiple) for g in groups]


def bins_hash(bins: list[dict]) -> str:
    """A content hash of the exact tensors training will see (ids, masks, labels, order)."""
    h = hashlib.sha256()
    for b in bins:
        for k in ("input_ids", "attention_mask", "labels", "nll_mask"):
            t = b[k].contiguous()
            h.update(k.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def describe_skips(report: DataReport) -> str:
    if not report.skipped:
        return "no records skipped"
    return ", ".join(f"{n} {SKIP_REASONS.get(r, r)} ({r})" for r, n in report.skipped.most_common())
