"""The translation pipeline: records in, translated records (with ``_source`` and ``_mt``) out.

Fields are translated as *segments*: a string field is one segment, a chat field (a list of turns,
cltx.mt.chat) gives one segment per turn text, keyed ``FIELD[i]``; everything below that says
"field" holds for a turn alike (markers, fallback, protected spans, ``_mt`` keys, quality flags).

Per record, in ``joint`` mode (the paper's method):

1. the non-empty named fields are stripped of outer whitespace (kept aside and put back later);
2. an IT style none of them (nor the CS) contains is chosen; the joint sequence is
   ``CS [1] field₁ [2] field₂ …``;
3. a sequence longer than the engine's input limit is cut at sentence boundaries (or right before
   a marker) into pieces, which are translated and glued back (``_mt.split``);
4. the translation is split at the markers and validated (cltx.mt.markers.split); the text before
   the first marker — the translated CS — is dropped;
5. a record whose markers did not come back intact is sent again with the next free IT style
   (``style_retries`` times, default once; ``_mt.style_retries``);
6. a record that still fails (or has no free IT style, or whose joint call raised) is translated
   field by field instead: status ``fallback`` with ``_mt.reason`` (and ``_mt.it_styles_tried``).

``separate`` mode translates every field on its own (the paper's baseline). Engine calls are
batched across records. An engine exception is isolated to the texts that raise it; a record
whose translation still fails is kept with its English fields and status ``failed`` (``_mt.error``),
up to ``max_errors`` such records, beyond which the run stops (its output so far stays valid for
``--resume``).

Hooks: each :class:`RecordResult` passes through ``hooks`` (callables) before it is written — the
place for per-record metadata such as quality flags (``result.meta`` becomes ``_mt``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cltx._validate import check_fields, checked_init
from cltx.errors import CltxError, bad_arg
from cltx.mt import markers as its
from cltx.mt.catalyst import catalyst_for, check_setting, load_catalyst_file
from cltx.mt.chat import rebuild, segments
from cltx.mt.engines import Engine, checked_translate, engine_name, input_limit
from cltx.mt.protect import MarkerError as ProtectMarkerError
from cltx.mt.protect import translate_around
from cltx.mt.segment import cores, pack, strip_parts, translate_pieces

logger = logging.getLogger(__name__)

MODES = ("joint", "separate")


@checked_init
@dataclass
class MTConfig:
    """What to translate and how.

    Attributes:
        fields: names of the fields to translate, in joint-sequence order.
        src / tgt: language codes (``en``, ``pt`` …).
        mode: ``joint`` (CS + ITs, one call per record) or ``separate`` (one call per field).
        styles: IT style candidates, best first.
        catalyst: ``auto`` | ``none`` | ``kind:NAME`` | a sentence (cltx.mt.catalyst.catalyst_for).
        require_all: a record lacking any named field is invalid (default: translate what it has).
        max_errors: records allowed to fail in the engine before the run stops.
        batch_records: records per engine round (also the unit of incremental writing).
        style_retries: joint re-tries with the next free IT style for a record whose markers did not
            come back intact, before it falls back to field by field (0: fall back at once).
        protect: mask protected spans (code, URLs, e-mails, placeholders, markup, emoji and other
            non-ASCII symbols, words in scripts foreign to ``src``/``tgt``) before translation and
            restore them byte for byte after (cltx.mt.protect); a lost marker sends the record
            down the fallback path (``_mt.reason``/``_mt.protect``).
        protect_patterns: extra user regexes to protect (``--protect``), matched before the built-ins.
        quality: run the quality checks (cltx.mt.quality) and record ``_mt.flags``.
        on_flag: what a flagged record gets: ``keep`` (marked), ``retry`` (other mode, better kept)
            or ``reject`` (to the rejects file).
    """

    fields: list[str]
    src: str = "en"
    tgt: str = "pt"
    mode: str = "joint"
    styles: tuple[its.ITStyle, ...] = its.DEFAULT_STYLES
    catalyst: str = "auto"
    require_all: bool = False
    max_errors: int = 10
    batch_records: int = 32
    style_retries: int = 1
    protect: bool = True
    protect_patterns: tuple[str, ...] = ()
    quality: bool = False
    on_flag: str = "keep"

    def __post_init__(self) -> None:
        # Wrong types are named by field (only library calls can pass them: the CLI's are typed);
        # ``fields`` also takes a comma-separated string and is checked below.
        check_fields(self, skip=("fields",), fix_hints={"styles": "e.g. cltx.mt.markers.parse_styles('bracket,paren')"})
        if isinstance(self.fields, str):
            self.fields = [f.strip() for f in self.fields.split(",")]
        if not isinstance(self.fields, (list, tuple)) or not all(isinstance(f, str) for f in self.fields):
            raise bad_arg("--fields", self.fields, "give field names as strings, e.g. fields=['question', 'answer']")
        self.fields = [f for f in self.fields if f]
        if not self.fields:
            raise bad_arg("--fields", self.fields, "name at least one field, e.g. --fields instruction,input,output")
        dup = sorted({f for f in self.fields if self.fields.count(f) > 1})
        if dup:
            raise bad_arg("--fields", ",".join(self.fields), f"{', '.join(dup)} named twice")
        reserved = [f for f in self.fields if f in ("_source", "_mt", "_source_prev", "_mt_prev")]
        if reserved:
            raise bad_arg(
                "--fields", ",".join(self.fields), "_source, _mt, _source_prev and _mt_prev are written by cltx mt"
            )
        if self.mode not in MODES:
            raise bad_arg("--mode", self.mode, f"choose one of {', '.join(MODES)}")
        if not self.styles:
            raise bad_arg("--it-styles", self.styles, "give at least one style")
        if self.max_errors < 0:
            raise bad_arg("--max-errors", self.max_errors, "use 0 or more")
        check_setting(self.catalyst)
        if self.style_retries < 0:
            raise bad_arg("--style-retries", self.style_retries, "use 0 or more")
        if self.batch_records < 1:
            raise bad_arg("--batch-records", self.batch_records, "use 1 or more")
        for s in (self.src, self.tgt):
            if not s or not s.strip():
                raise bad_arg("--src/--tgt", s, "give a language code such as en or pt")
        from cltx.mt.protect import compile_patterns
        from cltx.mt.quality import ON_FLAG

        self.protect_patterns = tuple(self.protect_patterns)
        compile_patterns(self.protect_patterns)  # a bad --protect regex fails before any work
        if self.on_flag not in ON_FLAG:
            raise bad_arg("--on-flag", self.on_flag, f"choose one of {', '.join(ON_FLAG)}")

    def fingerprint(self) -> dict:
        """What must match between a run and its ``--resume``."""
        return {
            "fields": self.fields,
            "src": self.src,
            "tgt": self.tgt,
            "mode": self.mode,
            "styles": [s.name for s in self.styles],
            "catalyst": self.catalyst,
            "require_all": self.require_all,
            "style_retries": self.style_retries,
            "protect": self.protect,
            "protect_patterns": list(self.protect_patterns),
            "quality": self.quality,
            "on_flag": self.on_flag,
        }


@dataclass
class RecordResult:
    """One translated record before it is written.

    Attributes:
        line: input position (line number / array item).
        record: the input record (not modified).
        source: ``{field: English value}`` for every translated field (a string, or a chat field's
            list of turns as it came; cltx.mt.chat.flat_texts gives the texts per segment).
        translated: ``{field: translation}`` (a chat field: its turns with the texts translated).
        meta: becomes ``_mt`` (``status``, ``it_style``, ``split``, ``reason``, ``error`` …).
        rejected: the quality gate sent it to the rejects file (``--on-flag reject``).
        extras: not written; for hooks (``catalyst``: the English CS, ``catalyst_translated``).
    """

    line: int
    record: dict
    source: dict[str, str | list]
    translated: dict[str, str | list]
    meta: dict = field(default_factory=dict)
    rejected: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.meta["status"]

    def output(self) -> dict:
        """The output record: all fields, the translated ones replaced, then ``_source`` and ``_mt``.

        The input record's own ``_source``/``_mt`` (an earlier ``cltx mt`` output translated again)
        are kept as ``_source_prev``/``_mt_prev``, never dropped.

        Raises:
            CltxError: the record also has ``_source_prev``/``_mt_prev`` (see
                :func:`cltx.mt.records.previous_run_clash`); input files are checked for this first.
        """
        from cltx.mt.records import WRITTEN_KEYS, previous_run_clash

        clash = previous_run_clash(self.record)
        if clash:
            raise CltxError(f"record {self.line}: {clash}")
        out = {k: v for k, v in self.record.items() if k not in WRITTEN_KEYS}
        out.update(self.translated)
        for k in WRITTEN_KEYS:
            if k in self.record:
                out[f"{k}_prev"] = self.record[k]
        out["_source"] = dict(self.source)
        out["_mt"] = dict(self.meta)
        return out


RecordHook = Callable[[RecordResult], None]


def _splits_back(cores: list[str], style: its.ITStyle, catalyst: str | None) -> bool:
    """Whether the untranslated joint sequence of ``cores`` splits back into ``cores`` with ``style``."""
    try:
        return its.split(its.join(cores, style, catalyst), len(cores), style) == cores
    except its.DecompositionError:
        return False


class _Job:
    """Texts of one unit of work (a joint sequence or one field) cut into pieces."""

    __slots__ = ("pieces", "texts", "outs", "error")

    def __init__(self, text: str, limit: int | None, length, before=None) -> None:
        self.pieces = pack(text, limit, length, before=before)
        self.texts = cores(self.pieces)
        self.outs: list[str] | None = None
        self.error: str | None = None

    def result(self) -> str:
        return translate_pieces(self.pieces, self.outs or [])


class _Work:
    """Per-record working state."""

    def __init__(self, line: int, record: dict, fields: list[str]) -> None:
        self.line = line
        self.record = record
        self.fields = [f for f in fields if isinstance(record.get(f), (str, list))]
        segs = list(segments(record, fields))
        # Below, "f" is a segment key: a string field's name, or FIELD[i] for a chat field's turn i.
        self.owner = {k: f for f, k, _ in segs}
        self.present = [k for _, k, _ in segs]
        self.parts = {k: strip_parts(t) for _, k, t in segs}
        self.nonempty = [f for f in self.present if self.parts[f][1]]
        # What goes to the engine: all non-empty fields as they are, unless protection masks them
        # (then fields that are only protected spans are restored without the engine: ``direct``).
        self.send = list(self.nonempty)
        self.texts = {f: self.parts[f][1] for f in self.nonempty}
        self.masks: dict = {}
        self.direct: dict[str, str] = {}
        self.cs: str | None = None
        self.cs_translated: str | None = None
        self.meta: dict = {"line": line}
        self.translated: dict[str, str] = {}
        self.joint: _Job | None = None
        self.style: its.ITStyle | None = None
        self.separate: dict[str, _Job] = {}
        self.around = False  # no free protected-span marker form: fields translated around their spans


class Pipeline:
    """Translate records with an engine under an :class:`MTConfig`.

    Args:
        engine: anything with ``translate(list[str]) -> list[str]`` (cltx.mt.engines).
        config: the settings.
        hooks: callables run on every :class:`RecordResult` before it is returned.
    """

    def __init__(self, engine: Engine, config: MTConfig, hooks: Sequence[RecordHook] = (), *, quality=None) -> None:
        from cltx.mt.protect import compile_patterns

        if not isinstance(config, MTConfig):
            raise bad_arg("config", config, "give an MTConfig, e.g. MTConfig(fields=['question', 'answer'])")
        if isinstance(engine, str):  # str has a .translate of its own
            raise bad_arg("engine", engine, f"give an engine object, e.g. make_engine({engine!r}, 'en', 'pt')")
        if not callable(getattr(engine, "translate", None)):
            raise bad_arg(
                "engine", engine, "give an engine: an object with translate(list[str]) -> list[str], "
                "e.g. make_engine('bergamot', 'en', 'pt')",
            )  # fmt: skip
        if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
            raise bad_arg("hooks", hooks, "give a list of callables fn(result: RecordResult)")
        hooks = list(hooks)
        for h in hooks:
            if not callable(h):
                raise bad_arg("hooks", h, "each hook must be a callable fn(result: RecordResult)")
        self.engine = engine
        self.config = config
        self.hooks = hooks
        self._patterns = (
            compile_patterns(config.protect_patterns, src=config.src, tgt=config.tgt) if config.protect else None
        )
        if quality is None and config.quality:
            from cltx.mt.quality import QualityConfig, QualityGate

            quality = QualityGate(QualityConfig(src=config.src, tgt=config.tgt), config.on_flag)
        self.quality = quality  # cltx.mt.quality.QualityGate or None
        self._siblings: dict[str, Pipeline] = {}
        self.limit, self.length = input_limit(engine)
        self._cs_table = load_catalyst_file(config.catalyst) if config.catalyst.startswith("@") else None
        self.errors = 0
        self.last_error: str | None = None

    def sibling(self, mode: str) -> Pipeline:
        """A pipeline like this one in another ``mode`` (same engine; no hooks, no quality gate)."""
        if mode not in self._siblings:
            import dataclasses

            cfg = dataclasses.replace(self.config, mode=mode, quality=False)
            self._siblings[mode] = Pipeline(self.engine, cfg)
        return self._siblings[mode]

    @staticmethod
    def _cs_fields(w: _Work, keys: list[str]) -> list[str]:
        """The field names the CS describes: a chat field once, however many turns it has."""
        return list(dict.fromkeys(w.owner[k] for k in keys))

    # ---------------------------------------------------------------- protected spans
    def _mask(self, w: _Work) -> None:
        """Mask the record's protected spans; fields that are only spans skip the engine."""
        from cltx.mt.protect import DEFAULT_FORMS, NoFreeFormError, mask_record, unmask

        if self._patterns is None or not w.nonempty:
            return
        cs = catalyst_for(self._cs_fields(w, w.nonempty), self.config.catalyst, self._cs_table)
        texts = [w.parts[f][1] for f in w.nonempty]
        try:
            masks = mask_record(texts, self._patterns, avoid=[cs or ""])
        except NoFreeFormError:
            # The record's own text holds every marker form, so no marker could be told apart from it:
            # translate each field around its spans instead (no marker reaches the engine, any form will do).
            masks = mask_record(texts, self._patterns, form=DEFAULT_FORMS[0])
            w.around = True
            w.meta["reason"] = "every protected-span marker form already occurs in the record"
        if not any(m.spans or m.suffix for m in masks):
            return
        w.masks = dict(zip(w.nonempty, masks, strict=True))
        w.meta["protected"] = sum(len(m.spans) + bool(m.suffix) for m in masks)
        w.send = [f for f in w.nonempty if w.masks[f].needs_engine]
        w.texts = {f: w.masks[f].text.strip() for f in w.send}
        w.direct = {f: unmask("", w.masks[f]) for f in w.nonempty if not w.masks[f].needs_engine}

    def _restore(self, w: _Work, field_name: str, out: str) -> str:
        """The translation of one field with its protected spans back (raises MarkerError)."""
        from cltx.mt.protect import unmask

        m = w.masks.get(field_name)
        return out if m is None else unmask(out, m)

    def _restore_or_around(self, w: _Work, field_name: str, out: str) -> str:
        """Field-by-field path: restore, or (marker lost) translate around the spans instead."""
        from cltx.mt.protect import MarkerError, translate_around

        try:
            return self._restore(w, field_name, out)
        except MarkerError as e:
            w.meta.setdefault("protect", {})[field_name] = {**e.as_dict(), "fallback": "translated around the spans"}
            return translate_around(self._translate_now, w.masks[field_name])

    def _translate_now(self, texts: list[str]) -> list[str]:
        """One engine call outside the batched rounds, each text cut to the engine's input limit."""
        jobs = [_Job(t, self.limit, self.length) for t in texts]
        outs = checked_translate(self.engine, [c for j in jobs for c in j.texts])
        k = 0
        for j in jobs:
            j.outs, k = outs[k : k + len(j.texts)], k + len(j.texts)
        return [j.result() for j in jobs]

    # ---------------------------------------------------------------- engine calls
    def _run_jobs(self, jobs: list[_Job]) -> None:
        """Translate every job's texts in one engine round; isolate exceptions to their texts."""
        flat = [t for j in jobs for t in j.texts]
        if not flat:
            for j in jobs:
                j.outs = []
            return
        try:
            outs: list[str | BaseException] = list(checked_translate(self.engine, flat))
        except Exception as e:  # noqa: BLE001 - any engine failure is recorded, not fatal
            if len(flat) == 1:
                outs = [e]
            else:
                logger.warning("engine raised on a batch of %d texts (%s); retrying them one by one", len(flat), e)
                outs = []
                for t in flat:
                    try:
                        outs.extend(checked_translate(self.engine, [t]))
                    except Exception as e1:  # noqa: BLE001
                        outs.append(e1)
        k = 0
        for j in jobs:
            mine = outs[k : k + len(j.texts)]
            k += len(j.texts)
            bad = [o for o in mine if isinstance(o, BaseException)]
            if bad:
                j.error = f"{type(bad[0]).__name__}: {bad[0]}"[:300]
                j.outs = None
            else:
                j.outs = mine  # type: ignore[assignment]

    # ---------------------------------------------------------------- one batch
    def translate_batch(self, items: Iterable[tuple[int, dict]]) -> list[RecordResult]:
        """Translate ``(line, record)`` pairs (records already checked) in one engine round or two.

        Raises:
            CltxError: more than ``config.max_errors`` records have failed in this pipeline's life.
        """
        cfg = self.config
        works = [_Work(line, rec, cfg.fields) for line, rec in items]
        pending: list[_Work] = []
        for w in works:
            self._mask(w)
            if not w.nonempty:
                w.meta["status"] = "empty"
            elif not w.send:  # only protected spans: nothing for the engine
                w.meta["status"] = "empty"
                w.translated = dict(w.direct)
            elif cfg.mode == "joint" and not w.around:
                pending.append(w)
        # Joint rounds: the first style the record allows, then (style_retries) the next ones for
        # records whose markers did not come back intact. An engine error goes straight to fallback.
        tried: dict[int, list[str]] = {}
        for attempt in range(1 + cfg.style_retries):
            jobs = []
            for w in pending:
                cores_ = [w.texts[f] for f in w.send]
                cs = catalyst_for(self._cs_fields(w, w.send), cfg.catalyst, self._cs_table)
                w.cs = cs
                allowed = tuple(s for s in cfg.styles if s.name not in tried.get(id(w), []))
                style = its.choose_style([*cores_, cs or ""], allowed)
                # A style whose markers the record's own text completes across a field boundary
                # ("|0" + " |2|" reads as "|0 |") would fail even on a perfect engine: skip it.
                while style is not None and not _splits_back(cores_, style, cs):
                    allowed = tuple(s for s in allowed if s is not style)
                    style = its.choose_style([*cores_, cs or ""], allowed)
                if style is None:
                    if attempt == 0:
                        w.meta["reason"] = "every IT style already occurs in the record"
                    w.joint = None
                    continue
                tried.setdefault(id(w), []).append(style.name)
                w.style = style
                w.joint = _Job(its.join(cores_, style, cs), self.limit, self.length, before=style.regex)
                jobs.append(w.joint)
            self._run_jobs(jobs)
            retry = []
            for w in pending:
                if w.joint is None:
                    continue
                w.meta["it_style"] = w.style.name  # type: ignore[union-attr]
                if len(w.joint.pieces) > 1:
                    w.meta["split"] = {"joint": len(w.joint.pieces)}
                else:
                    w.meta.pop("split", None)
                if w.joint.error is not None:
                    w.meta["reason"] = f"engine error: {w.joint.error}"
                    continue
                joint_out = w.joint.result()
                try:
                    parts = its.split(joint_out, len(w.send), w.style)  # type: ignore[arg-type]
                except its.DecompositionError as e:
                    w.meta["reason"] = str(e)
                    retry.append(w)
                    continue
                try:
                    restored = {f: self._restore(w, f, p) for f, p in zip(w.send, parts, strict=True)}
                except ProtectMarkerError as e:
                    # a lost protected-span marker: straight to the field-by-field path, and say so
                    w.meta["reason"] = "protected span marker lost"
                    w.meta["protect"] = {"joint": e.as_dict()}
                    continue
                w.translated = {**restored, **w.direct}
                first = w.style.regex.search(joint_out)  # type: ignore[union-attr]
                w.cs_translated = joint_out[: first.start()].strip() if first and w.cs else None
                w.meta["status"] = "joint"
                w.meta.pop("reason", None)
                if attempt:
                    w.meta["style_retries"] = attempt
            pending = retry
            if not pending:
                break

        sep_jobs: list[_Job] = []
        for w in works:
            if w.meta.get("status") in ("empty", "joint"):
                continue
            if len(tried.get(id(w), [])) > 1:
                w.meta["it_styles_tried"] = tried[id(w)]
            if w.around:
                continue  # translated below, around its spans
            for f in w.send:
                w.separate[f] = _Job(w.texts[f], self.limit, self.length)
                sep_jobs.append(w.separate[f])
        self._run_jobs(sep_jobs)

        results = []
        for w in works:
            if w.separate or w.around:
                w.meta["status"] = "separate" if cfg.mode == "separate" else "fallback"
                splits = {f: len(j.pieces) for f, j in w.separate.items() if len(j.pieces) > 1}
                if splits:
                    w.meta.setdefault("split", {}).update(splits)
                failed = {f: j.error for f, j in w.separate.items() if j.error is not None}
                done = {}
                for f in w.send if not failed else ():
                    try:
                        if w.around:
                            done[f] = translate_around(self._translate_now, w.masks[f])
                        else:
                            done[f] = self._restore_or_around(w, f, w.separate[f].result())
                    except Exception as e:  # noqa: BLE001 - the engine call around the spans fails its record only
                        failed[f] = f"{type(e).__name__}: {e}"[:300]
                        continue
                    if not done[f].strip():  # written as "", the field's text would be lost without a word
                        failed[f] = "the engine returned an empty translation"
                if failed:
                    w.meta["status"] = "failed"
                    w.meta["error"] = "; ".join(f"{f}: {e}" for f, e in failed.items())[:500]
                    w.translated = {}
                else:
                    w.translated = {**done, **w.direct}
            # put the outer whitespace back; empty segments stay as they were
            texts = {}
            for k in w.present:
                lead, core, trail = w.parts[k]
                if w.meta["status"] != "failed" and core:
                    texts[k] = lead + w.translated[k] + trail
            translated = {f: rebuild(w.record[f], f, texts) for f in w.fields}
            source = {f: w.record[f] for f in w.fields}
            meta = {"line": w.line, "status": w.meta["status"]}
            meta.update({k: v for k, v in w.meta.items() if k not in meta})
            res = RecordResult(w.line, w.record, source, translated, meta)
            if w.cs:
                res.extras["catalyst"] = w.cs
                res.extras["catalyst_translated"] = w.cs_translated
            if meta["status"] in ("fallback", "failed"):
                logger.info("line %d: %s (%s)", w.line, meta["status"], meta.get("error") or meta.get("reason"))
            results.append(res)
        if self.quality is not None:
            results = self.quality.process(results, self)
        for res in results:
            for hook in self.hooks:
                hook(res)
        n_failed = sum(r.status == "failed" for r in results)
        if n_failed:
            self.errors += n_failed
            self.last_error = next(r.meta["error"] for r in results if r.status == "failed")
            if self.errors > cfg.max_errors:
                raise CltxError(
                    f"engine {engine_name(self.engine)} failed on {self.errors} records, over the error budget "
                    f"--max-errors={cfg.max_errors}; last error: {self.last_error}; "
                    f"fix: repair the engine, then rerun with --resume"
                )
        return results


def translate_records(
    records: Sequence[dict], engine: Engine, config: MTConfig, hooks: Sequence[RecordHook] = ()
) -> list[dict]:
    """In-memory convenience: translate records, return the output records in order.

    Each record is checked as ``cltx mt`` checks a file's lines (:func:`cltx.mt.records.check_record`)
    before any engine time is spent; the first invalid one raises :class:`CltxError` naming
    ``records[i]``. ``_mt.line`` is the record's 1-based position.
    """
    from cltx.mt.records import check_record

    if isinstance(records, (dict, str, bytes)) or not isinstance(records, Iterable):
        raise bad_arg("records", records, "give a list of dicts, one per record")
    pipe = Pipeline(engine, config, hooks)
    out: list[dict] = []
    items = list(enumerate(records, start=1))
    bad = [(i, e) for i, rec in items if (e := check_record(rec, config.fields, f"records[{i - 1}]",
                                                          require_all=config.require_all))]  # fmt: skip
    if bad:
        more = f" [{len(bad) - 1} more invalid record(s)]" if len(bad) > 1 else ""
        raise CltxError(f"{bad[0][1]}{more}")
    for k in range(0, len(items), config.batch_records):
        out.extend(r.output() for r in pipe.translate_batch(items[k : k + config.batch_records]))
    return out
