"""The end-of-run report: counts from the finished output file, speed from this session, and
(with reference translations) BLEU and chrF per field through sacrebleu (chat fields turn by turn).

Counts are read back from the output file, so a resumed run reports on the whole file; speed
(records/s, source characters/s) covers the records translated in this session only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from cltx.errors import CltxError
from cltx.mt.chat import text_key

logger = logging.getLogger(__name__)


def _iter_jsonl_lines(path: Path):
    """``(line number, record)`` of every non-blank line of ``path``."""
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise CltxError(f"{path}:{i}: malformed JSON ({e.msg}); fix: repair the file") from e


def _iter_jsonl(path: Path):
    return (rec for _, rec in _iter_jsonl_lines(path))


def _read_jsonl(path: Path) -> list[dict]:
    return list(_iter_jsonl(path))


def read_references(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, record)`` of every reference in ``path`` (JSONL of objects).

    Raises:
        CltxError: a line is not valid JSON or not an object, or the file is not UTF-8.
    """
    refs = []
    try:
        for i, r in _iter_jsonl_lines(Path(path)):
            if not isinstance(r, dict):
                raise CltxError(
                    f"{path}:{i}: expected a JSON object, got {type(r).__name__}; fix: one reference record per line"
                )
            refs.append((i, r))
    except UnicodeDecodeError as e:
        raise CltxError(f"{path}: not UTF-8 text ({e.reason}); fix: re-encode the file as UTF-8") from e
    return refs


def _aligned_by_id(
    refs: list[tuple[int, dict]], n_outputs: int | None, references: str | Path, what: str = "outputs"
) -> bool:
    """Whether references align by ``id`` (all have one); else their count must be ``n_outputs``
    (``None``: not known yet) — ``what`` names those records in the message."""
    if refs and all("id" in r for _, r in refs):
        return True
    if n_outputs is not None and len(refs) != n_outputs:
        raise CltxError(
            f"--references={str(references)!r}: {len(refs)} records for {n_outputs} {what} and no 'id' "
            f"field to align them; fix: give one reference per record in order, or an 'id' on both"
        )
    return False


def check_references(references: str | Path, n_outputs: int | None, what: str = "outputs") -> None:
    """Check ``--references`` before any translation: what :func:`reference_scores` would refuse after it.

    Args:
        references: the reference JSONL file.
        n_outputs: how many records references aligned by position must have (``None``: not checked):
            the valid input records, which the output holds unless ``--on-flag reject`` takes some out.
        what: what ``n_outputs`` counts, for the message.
    """
    _aligned_by_id(read_references(references), n_outputs, references, what)


def _corpus_scores(hyp: list[str], ref: list[str]) -> dict:
    """``{"bleu", "chrf"}`` of the hypotheses ``hyp`` against one reference each (``ref``), corpus-level."""
    import sacrebleu

    return {
        "bleu": round(sacrebleu.corpus_bleu(hyp, [ref]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyp, [ref]).score, 2),
    }


def _turn_text(turn: object) -> str | None:
    """A chat turn's text (``content`` or ``value``), or ``None`` if it is not a turn with a string text."""
    key = text_key(turn) if isinstance(turn, dict) else None
    return turn[key] if key is not None and isinstance(turn[key], str) else None


def _scorable_turns(out_turns: list, src_turns: object) -> list[int]:
    """Positions of the output turns that carry a translation: a non-blank source text, a string output."""
    src = src_turns if isinstance(src_turns, list) and len(src_turns) == len(out_turns) else out_turns
    return [
        i for i, turn in enumerate(out_turns) if _turn_text(turn) is not None and (_turn_text(src[i]) or "").strip()
    ]


def _kind(v: str | list) -> str:
    return "chat list" if isinstance(v, list) else "string"


def reference_scores(
    outputs: list[dict], references: str | Path, fields: list[str], *, positions: list[int] | None = None
) -> dict:
    """BLEU and chrF per field of ``outputs`` against ``references`` (JSONL).

    Alignment: by the ``id`` field when every reference has one (references may then cover a
    subset), otherwise by position: with ``positions`` (the input positions of the valid input
    records, in order) the n-th reference goes with the output whose ``_mt.line`` is
    ``positions[n]``, so records that left the output (``--on-flag reject``) do not shift the pairs;
    without it, with the n-th output record. Failed records and records without the field on
    either side (absent or ``null``) are left out.

    A string field is one segment per record. A chat field (a list of ``{"role", "content"}`` or
    ShareGPT ``{"from", "value"}`` turns) is scored turn by turn: the output's turn ``i`` goes with
    the reference record's turn ``i`` of the same field, and BLEU/chrF are corpus scores over all
    paired turns of all records, under the field's name. Turns whose source text (``_source``, else
    the output turn itself) is ``null``, empty or blank are not translated, so they are not scored
    and not counted. The other unpaired turns are counted in ``skipped``:

    * the reference conversation has another number of turns than the output: positions no longer
      line up (a dropped system turn would shift every pair), so none of that record's turns are
      scored and all of its translated turns are skipped;
    * the reference turn at the same position is not a turn object, has no ``content``/``value``,
      or its text is ``null``, not a string, or blank: that turn is skipped;
    * the field is a string on one side and a chat list on the other: the record is skipped (a
      string output counts one, a chat output its translated turns), with one warning per field
      naming the first such reference line.

    An empty reference string for a string field is left out without counting, as before.

    Returns:
        ``{field: {"n", "bleu", "chrf", "skipped"}}`` for each field with something scored or
        skipped; ``n`` is the number of segments (records for a string field, turns for a chat
        field) scored. With ``n == 0`` (everything skipped) ``bleu`` and ``chrf`` are ``None``.
    """
    refs = read_references(references)
    n, what = (len(outputs), "outputs") if positions is None else (len(positions), "valid input records")
    if _aligned_by_id(refs, n, references, what):
        by_id = {str(r["id"]): (i, r) for i, r in refs}
        pairs = [(o, *by_id.get(str(o.get("id")), (None, None))) for o in outputs]
    elif positions is None:
        pairs = [(o, i, r) for o, (i, r) in zip(outputs, refs, strict=True)]
    else:
        at = dict(zip(positions, refs, strict=True))
        pairs = [(o, *at.get(o.get("_mt", {}).get("line"), (None, None))) for o in outputs]
    scores = {}
    for f in fields:
        hyp, ref = [], []
        skipped = 0
        kind_mismatch: list[tuple[int, str, str]] = []  # (reference line, output kind, reference kind)
        for o, line, r in pairs:
            if r is None or o.get("_mt", {}).get("status") == "failed":
                continue
            ov, rv = o.get(f), r.get(f)
            if ov is None or rv is None:
                continue
            src = o.get("_source")
            src = src.get(f) if isinstance(src, dict) else None
            if isinstance(ov, str) and isinstance(rv, str):
                if rv.strip():
                    hyp.append(ov)
                    ref.append(rv)
            elif isinstance(ov, list) and isinstance(rv, list):
                todo = _scorable_turns(ov, src)
                if len(rv) != len(ov):
                    skipped += len(todo)
                    continue
                for i in todo:
                    rt = _turn_text(rv[i])
                    if rt is None or not rt.strip():
                        skipped += 1
                    else:
                        hyp.append(_turn_text(ov[i]))
                        ref.append(rt)
            elif isinstance(ov, (str, list)) and isinstance(rv, (str, list)):
                lost = 1 if isinstance(ov, str) else len(_scorable_turns(ov, src))
                if lost:
                    skipped += lost
                    kind_mismatch.append((line, _kind(ov), _kind(rv)))
        if kind_mismatch:
            line, o_kind, r_kind = kind_mismatch[0]
            logger.warning(
                "--references=%s line %d: field %r is a %s in the reference but a %s in the output; "
                "%d record(s) like it not scored (counted as skipped); fix: give the reference the output's shape",
                references,
                line,
                f,
                r_kind,
                o_kind,
                len(kind_mismatch),
            )
        if hyp or skipped:
            scores[f] = {
                "n": len(hyp),
                **(_corpus_scores(hyp, ref) if hyp else {"bleu": None, "chrf": None}),
                "skipped": skipped,
            }
    return scores


def build_report(
    output: Path,
    rejects: Path,
    *,
    config,
    engine: str,
    session: dict,
    elapsed: float,
    references: str | Path | None = None,
    world_size: int = 1,
    extra: dict | None = None,
    positions: list[int] | None = None,
) -> dict:
    """The report dict (also written as JSON beside the output); ``extra`` is merged in (cache counters).

    ``positions``: the input positions of the valid input records, in order; references without
    ``id`` align with them (see :func:`reference_scores`).
    """
    from cltx.mt.quality import FLAG_NAMES

    # one streaming pass: counts only (the records are kept only when references are to be scored)
    status: Counter = Counter()
    reasons: Counter = Counter()
    styles: Counter = Counter()
    n_rows = n_split = n_retried = 0
    flag_counts: Counter = Counter()
    n_flagged = n_protected = n_protect_fb = n_q_retried = n_q_kept = 0
    kept: list[dict] = []
    for r in _iter_jsonl(output) if output.exists() else ():
        mt = r.get("_mt", {})
        n_rows += 1
        status[mt.get("status", "?")] += 1
        reason = mt.get("reason")
        if reason:
            reasons[reason.split(":")[0] if reason.startswith("engine error") else reason] += 1
        if mt.get("it_style"):
            styles[mt["it_style"]] += 1
        n_split += bool(mt.get("split"))
        n_retried += bool(mt.get("style_retries"))
        if mt.get("flags"):
            n_flagged += 1
            for per_field in mt["flags"].values():
                flag_counts.update(per_field.keys())
        n_protected += bool(mt.get("protected"))
        n_protect_fb += bool(mt.get("protect"))
        if mt.get("retry"):
            n_q_retried += 1
            n_q_kept += mt["retry"].get("kept") == "retry"
        if references is not None:
            kept.append({k: v for k, v in r.items() if k in config.fields or k in ("id", "_mt", "_source")})
    n_rejects = n_q_rejects = 0
    for rj in _iter_jsonl(rejects) if rejects.exists() else ():
        n_rejects += 1
        if "flags" in rj:
            n_q_rejects += 1
            for per_field in rj["flags"].values():
                flag_counts.update(per_field.keys())
    attempted = status["joint"] + status["fallback"] + (status["failed"] if config.mode == "joint" else 0)
    report = {
        "input_records": n_rows + n_rejects,
        "records": n_rows,
        "rejected": n_rejects,
        "mode": config.mode,
        "engine": engine,
        "src": config.src,
        "tgt": config.tgt,
        "fields": config.fields,
        "status": dict(status),
        "joint_success_rate": round(status["joint"] / attempted, 4) if attempted else None,
        "joint_after_style_retry": n_retried,
        "fallbacks": status["fallback"],
        "failures": status["failed"],
        "fallback_reasons": dict(reasons.most_common(10)),
        "split_records": n_split,
        "it_styles": dict(styles),
        "quality": {
            "checked": bool(getattr(config, "quality", False)),
            "on_flag": getattr(config, "on_flag", "keep"),
            "flagged_records": n_flagged + n_q_rejects,
            "by_flag": {k: flag_counts.get(k, 0) for k in FLAG_NAMES},
            "rejected": n_q_rejects,
            "retried": n_q_retried,
            "retry_kept": n_q_kept,
        },
        "protect": {
            "on": bool(getattr(config, "protect", False)),
            "records_with_spans": n_protected,
            "marker_lost_fallbacks": n_protect_fb,
        },
        "session": {
            "records": session.get("records", 0),
            "seconds": round(elapsed, 3),
            "records_per_s": round(session.get("records", 0) / elapsed, 3) if elapsed > 0 else None,
            "source_chars_per_s": round(session.get("source_chars", 0) / elapsed, 1) if elapsed > 0 else None,
            "world_size": world_size,
        },
        "output": str(output),
        "rejects": str(rejects) if n_rejects else None,
    }
    report.update(extra or {})
    if references is not None:
        report["references"] = str(references)
        report["scores"] = reference_scores(kept, references, config.fields, positions=positions)
    return report


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
