"""Reading and checking input records (JSONL or a JSON array).

Every input item has a position: its 1-based line number in a JSONL file, or its 1-based index in
a JSON array. Errors name ``file:line`` (``file item N`` for arrays). Blank JSONL lines are not
records and are skipped. A file is a JSON array only when the whole file is one: a JSONL file whose
first line is an array (``[1, 2]``) is JSONL, and that line is an item that is not an object.

Which fields a record must have: a record is translated on the named fields it *has* (a string
value; ``null`` counts as absent); a named field it lacks is simply not translated. It is an error
when a record has none of the named fields, or — with ``require_all`` — lacks any of them. A named
field holding anything but a string, a list of chat turns (cltx.mt.chat) or null (a number, a list of
strings …) is always an error.

Records that already carry ``_source`` / ``_mt`` (a ``cltx mt`` output translated again, e.g. back
into English) keep them as ``_source_prev`` / ``_mt_prev``: the new run writes its own ``_source``
and ``_mt``. A record holding both ``_source`` and ``_source_prev`` (or both ``_mt`` and
``_mt_prev``, a third pass) is an error: moving the old value would overwrite the older one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cltx.errors import CltxError
from cltx.mt.chat import check_turns, shown


@dataclass
class InputItem:
    """One input item: position, raw text, the parsed record, or why it is invalid."""

    line: int
    raw: str
    record: dict | None = None
    error: str | None = None


def _where(path: Path, line: int, array: bool) -> str:
    return f"{path} item {line}" if array else f"{path}:{line}"


def _is_array(path: Path) -> bool:
    """Whether ``path`` is one JSON array (else it is JSONL).

    A file that opens with ``[`` is an array only if its first line does not already hold a whole
    JSON value with more text after it: a JSONL file whose first record is an array line (``[1, 2]``,
    then object lines) is JSONL, and that line is reported as not an object. A first line that is
    not complete JSON (``[`` or ``[{...},`` of a pretty-printed array) starts an array, whose syntax
    errors read_items reports as such.
    """
    # Bytes, not text: a JSONL line that is not UTF-8 must reach read_items (which rejects that
    # one line), not fail the decoding here.
    with open(path, "rb") as fh:
        first = b""
        for i, bline in enumerate(fh):
            first = (bline.removeprefix(b"\xef\xbb\xbf") if i == 0 else bline).strip()
            if first:
                break
        if first[:1] != b"[":
            return False
        if all(not bline.strip() for bline in fh):  # nothing after it: the whole file is this line
            return True
    try:  # more lines follow: JSONL if the first one is already a whole value
        json.loads(first)
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError
        return True
    return False


def read_items(path: str | Path, fields: list[str], *, require_all: bool = False) -> Iterator[InputItem]:
    """Yield every input item of ``path``, parsed and checked against ``fields``.

    Invalid items come with ``error`` set (a one-line message naming the file and line); the
    caller decides whether to stop or to write them to a rejects file.
    """
    path = Path(path)
    if not path.exists():
        raise CltxError(f"INPUT={str(path)!r}: no such file; fix: check the path")
    if not path.is_file():
        raise CltxError(f"INPUT={str(path)!r}: is a folder, not a file; fix: give a JSONL or JSON file")
    if _is_array(path):
        try:
            with open(path, encoding="utf-8-sig") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise CltxError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix: repair the file") from e
        except UnicodeDecodeError as e:
            raise CltxError(f"{path}: not UTF-8 text ({e.reason}); fix: re-encode the file as UTF-8") from e
        for i, obj in enumerate(data, start=1):
            item = InputItem(i, json.dumps(obj, ensure_ascii=False), obj)
            item.error = check_record(obj, fields, _where(path, i, True), require_all=require_all)
            yield item
        return
    with open(path, "rb") as fh:
        for i, bline in enumerate(fh, start=1):
            try:
                line = bline.decode("utf-8")
            except UnicodeDecodeError as e:
                yield InputItem(i, bline.decode("utf-8", "replace").rstrip("\r\n"), None,
                                f"{path}:{i}: not UTF-8 text ({e.reason})")  # fmt: skip
                continue
            text = line.lstrip("\ufeff").strip() if i == 1 else line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                msg = f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})"
                yield InputItem(i, line.rstrip("\r\n"), None, msg)
                continue
            item = InputItem(i, line.rstrip("\r\n"), obj)
            item.error = check_record(obj, fields, _where(path, i, False), require_all=require_all)
            yield item


#: Keys cltx mt writes into every output record; an input record's own values move to ``KEY_prev``.
WRITTEN_KEYS = ("_source", "_mt")


def previous_run_clash(obj: dict) -> str | None:
    """Why ``obj``'s own ``_source``/``_mt`` cannot be kept as ``*_prev`` (``None``: they can).

    A second ``cltx mt`` pass over an output moves its ``_source``/``_mt`` to ``_source_prev``/``_mt_prev``;
    a third pass would overwrite those, so it is refused rather than losing them silently.
    """
    clash = [k for k in WRITTEN_KEYS if k in obj and f"{k}_prev" in obj]
    if not clash:
        return None
    prev = [f"{k}_prev" for k in clash]
    return (
        f"record already has {' and '.join(prev)} (from earlier cltx mt runs) besides {' and '.join(clash)}; "
        f"translating it again would overwrite {prev[0]} with {clash[0]}; fix: remove or rename "
        f"{' and '.join(prev)} first, e.g. jq -c 'del({', '.join('.' + k for k in prev)})'"
    )


def check_record(obj: object, fields: list[str], where: str, *, require_all: bool = False) -> str | None:
    """``None`` if ``obj`` can be translated on ``fields``; else a one-line error message."""
    if not isinstance(obj, dict):
        return f"{where}: expected a JSON object, got {type(obj).__name__}"
    for f in fields:
        v = obj.get(f)
        if isinstance(v, list):  # a chat field (cltx.mt.chat): its turns' texts are translated
            why = check_turns(v, f)
            if why:
                return f"{where}: {why}"
            continue
        if v is not None and not isinstance(v, str):
            return (
                f"{where}: field {f!r} is a {type(v).__name__} ({shown(v, 60)}), not a string; "
                f"fix: make it a string (or a list of chat turns) or leave it out of --fields"
            )
    clash = previous_run_clash(obj)
    if clash:
        return f"{where}: {clash}"
    has = [f for f in fields if isinstance(obj.get(f), (str, list))]
    listed = ", ".join(repr(k) for k in obj) or "no fields"
    if require_all and len(has) < len(fields):
        missing = ", ".join(repr(f) for f in fields if f not in has)
        return f"{where}: record lacks field(s) {missing}; it has {listed}; fix: check --fields or drop --require-all"
    if not has:
        return (
            f"{where}: record has none of the fields {', '.join(fields)}; it has {listed}; "
            f"fix: check --fields (names are case-sensitive)"
        )
    return None
