"""``cltx eval``: does the model answer in the prompt's language, and how well does it model the
reference responses in each language?

For each held-out example (a record; a chat record gives one per exchange, its prompt the
conversation so far in that language, see ``DataSpec.chat_turns``), the prompt is asked once in
English and once in the target language;
the model answers greedily (``max_new_tokens`` bounded) and py3langid identifies the answer's
language. Reported per model and prompt language: the share of answers in the prompt's language,
the detected-language counts, and the held-out NLL (token mean, nats) of the reference response
given its prompt (x_en → y_en, x_tg → y_tg), computed through the same fused loss as training.
Several models evaluate on the same prompts, so base / CLO / SFT sit side by side.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from cltx.clo.data import (
    DataSpec,
    PromptFormatter,
    _sequence,
    build_examples,
    check_max_length,
    describe_skips,
    target_language,
    tokenize_examples,
)
from cltx.errors import CltxError, bad_arg
from cltx.progress import Progress, ensure_progress, quiet_hf_bars

logger = logging.getLogger(__name__)


def _norm_lang(code: str) -> str:
    return code.replace("_", "-").split("-")[0].lower()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text`` by py3langid; None for text without letters."""
    import py3langid as langid

    if not any(ch.isalpha() for ch in text):
        return None
    return langid.classify(text)[0]


def stop_token_ids(model, tok) -> list[int]:
    """Where a greedy answer ends: the tokenizer's EOS, every EOS of the model's generation config
    (instruct models list their end-of-turn tokens there) and, when the tokenizer has a chat
    template, what the template puts after an answer (:meth:`~cltx.clo.data.PromptFormatter.stop_ids`:
    a base model with a ChatML template learns to end with ``<|im_end|>``, not its EOS)."""
    ids: list[int] = []
    if getattr(tok, "chat_template", None):
        ids += PromptFormatter(tok, use_chat_template=True).stop_ids()
    for v in (tok.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if v is not None:
            ids += [int(i) for i in v] if isinstance(v, (list, tuple)) else [int(v)]
    return list(dict.fromkeys(ids))


def _generate(model, tok, prompts: list[list[int]], max_new_tokens: int, batch_size: int, progress, task) -> list[str]:
    import torch

    from cltx.clo.api import model_context

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # a prompt that fits the context may leave less than max_new_tokens after it: generating past it
    # indexes beyond learned position embeddings (GPT-2, OPT: IndexError; CUDA: a device-side assert)
    context, cut = model_context(model), 0
    # generate's eos_token_id replaces the generation config's: pass all of them, or an instruct
    # model's answer runs on past its end-of-turn token into text that counts towards its language
    eos = stop_token_ids(model, tok)
    outs: list[str] = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        n = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for r, p in enumerate(chunk):  # left padding: every prompt ends where generation starts
            ids[r, n - len(p) :] = torch.tensor(p)
            mask[r, n - len(p) :] = 1
        new = max_new_tokens if context is None else min(max_new_tokens, context - n)
        if new < 1:  # the prompt alone fills the context: no room for an answer
            outs += [""] * len(chunk)
            cut += len(chunk)
            progress.advance(task, len(chunk))
            continue
        cut += len(chunk) if new < max_new_tokens else 0
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for row in gen[:, n:]:
            outs.append(tok.decode(row, skip_special_tokens=True).strip())
        progress.advance(task, len(chunk))
    if cut:
        progress.message(
            f"{cut} of {len(prompts)} answers stop early at the model's context ({context} tokens): their "
            f"prompts (padded to their batch's longest) leave fewer than max_new_tokens={max_new_tokens}"
        )
    return outs


def _nll(model, tok, rows: list[tuple[list[int], list[int]]], batch_size: int) -> float:
    """Token-mean NLL of the responses (labels ≠ −100) through the fused loss (SFT form)."""
    import torch

    from cltx.clo.data import _pad
    from cltx.clo.model import CLOModel

    wrapper = CLOModel(model, method="sft")
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total, tokens = 0.0, 0
    for s in range(0, len(rows), batch_size):
        ids, labels, mask = _pad(rows[s : s + batch_size], pad, 1)
        with torch.no_grad():
            every = torch.ones(len(ids), dtype=torch.bool, device=device)
            _, m = wrapper(ids.to(device), mask.to(device), labels.to(device), every)
        total -= float(m["chosen_logps"].double().sum())
        tokens += int((labels != -100).sum())
    return total / tokens if tokens else float("nan")


def evaluate_model(
    model,
    tokenizer,
    examples,
    tokenized,
    *,
    tgt: str,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    progress: Progress | None = None,
    name: str = "model",
    data_report=None,
) -> dict[str, Any]:
    """Evaluate one loaded model on prepared examples; see the module docstring. ``data_report``:
    the :class:`~cltx.clo.data.DataReport` whose file lines name each sample's record."""
    progress = ensure_progress(progress)
    model.eval()
    result: dict[str, Any] = {"model": name}
    samples = []
    task = f"eval {name}"
    progress.start(task, total=2 * len(tokenized), description=f"eval {Path(name).name}")
    for lang, want in (("en", "en"), ("tgt", _norm_lang(tgt))):
        prompts = [t.prompt_en if lang == "en" else t.prompt_tg for t in tokenized]
        answers = _generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress, task)
        detected = [detect_language(a) for a in answers]
        hits = sum(1 for d in detected if d is not None and _norm_lang(d) == want)
        rows = [
            _sequence(t.prompt_en, t.response_en) if lang == "en" else _sequence(t.prompt_tg, t.response_tg)
            for t in tokenized
        ]
        result[lang] = {
            "language": want,
            "prompts": len(prompts),
            "in_prompt_language": hits / len(prompts) if prompts else float("nan"),
            "detected": dict(Counter(d or "none" for d in detected).most_common()),
            "nll": _nll(model, tokenizer, rows, batch_size),
        }
        by_key = {e.key: e for e in examples}
        for t, a, d in zip(tokenized, answers, detected, strict=True):
            ex = by_key[t.key]
            sample = {
                "record": data_report.line(t.index) if data_report is not None else t.index + 1,
                "prompt_language": want,
                "prompt": ex.prompt_en if lang == "en" else ex.prompt_tg,
                "answer": a,
                "detected": d,
            }
            if ex.turn is not None:  # chat records: which exchange (its response turn), after how many turns
                sample["turn"] = ex.turn
                sample["history_turns"] = len(ex.history_en) if t.history_turns is None else t.history_turns
            samples.append(sample)
    progress.finish(task)
    result["samples"] = samples
    return result


@quiet_hf_bars()
def evaluate_models(
    models: list[Any],
    data: str | Path | list[dict],
    *,
    tgt: str | None = None,
    spec: DataSpec | None = None,
    limit: int = 0,
    max_new_tokens: int = 64,
    max_length: int = 1024,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate each model on the same held-out prompts in both languages.

    Args:
        models: embedded names / folders / hub ids, or ``(name, model, tokenizer)`` triples.
        data: held-out records (``cltx mt`` output or bilingual JSONL), path or list.
        tgt: the target-language code (default: the records' ``_mt.tgt``, else the ``tgt`` of the
            ``NAME.report.json`` that ``cltx mt`` writes beside its output).
        limit: evaluate the first ``limit`` usable examples (0: all; a chat record gives one per exchange).
        out: write the JSON report here (a ``.json`` file).

    Returns:
        ``{"tgt", "records", "usable", "records_evaluated", "examples_beyond_limit", "skipped",
        "skipped_first_lines", "exchanges_skipped", "histories_trimmed", "histories_trimmed_for_other_models",
        "max_new_tokens", "models": [per-model results]}``.
        Records and examples are counted apart: ``usable`` is the number of examples evaluated (after
        ``limit``), ``records_evaluated`` the records they come from, ``examples_beyond_limit`` the usable
        examples ``limit`` left out; ``skipped`` counts records of which no example is usable (per reason),
        ``exchanges_skipped`` the unusable chat exchanges of records that still give examples.
        Chat examples: every model is asked the same conversation, the history that fits every model
        (each sample's ``history_turns``); ``histories_trimmed`` counts the evaluated examples asked with
        fewer earlier turns than their record has, ``histories_trimmed_for_other_models`` those of them
        that some model would have fitted with more (per model: ``histories_trimmed_for_others``).
    """
    import torch

    from cltx.clo.api import _read_data, load_policy

    progress = ensure_progress(progress)
    if not models:
        raise bad_arg("model", models, "pass at least one --model")
    if limit < 0:
        raise bad_arg("limit", limit, "must be ≥ 0 (0: every example)")
    if max_new_tokens < 1:
        raise bad_arg("max_new_tokens", max_new_tokens, "must be ≥ 1")
    check_max_length(max_length)  # as cltx clo: 0 or a negative one read as "no usable records"
    if batch_size < 1:
        raise bad_arg("batch_size", batch_size, "must be ≥ 1 (prompts per generation batch)")
    if out is not None and Path(out).is_dir():  # before the evaluation, not a traceback after it
        raise bad_arg("out", str(out), "is a folder; fix: pass a file path for the JSON report, e.g. --json eval.json")
    records, lines = _read_data(data, "data")
    tgt = tgt or target_language(records) or _report_language(data)
    if not tgt:
        raise bad_arg("tgt", tgt, "the records do not name their target language (_mt.tgt); pass --tgt, e.g. --tgt pt")
    check_language(tgt)
    examples, report = build_examples(records, spec, lines=lines)

    # Every model answers the same prompts: a record whose prompt does not fit one model's context
    # (another tokenizer, a shorter context) is left out for all of them, and counted; and a chat
    # example's history is the one that fits every model (see _same_histories).
    views, own = [], []
    for entry in models:
        name, tok, context = _tokenizer_view(entry)
        fmt = PromptFormatter(tok, use_chat_template=use_chat_template, system_prompt=system_prompt)
        rep = dataclass_copy(report)
        tokenized = tokenize_examples(examples, fmt, min(max_length, context or max_length), rep)
        if not tokenized:
            raise CltxError(
                f"data: no usable held-out records for {name} ({describe_skips(rep)}); "
                "fix: check the field options or --max-length"
            )
        views.append([entry, name, tokenized, rep, tok, fmt, min(max_length, context or max_length)])
        own.append(_dropped(examples, tokenized))  # the exchanges each model alone would leave out
    common = _same_histories(views, examples, report)
    order = [e.key for e in examples if e.key in common]
    if not order:
        raise CltxError(
            "data: no held-out record fits every model's --max-length/context; fix: raise --max-length or "
            "evaluate the models separately"
        )
    skipped, first_lines, exchanges = _skip_counts(report, examples, common)
    beyond = max(0, len(order) - limit) if limit else 0
    if limit:
        order = order[:limit]
    keep = set(order)
    # evaluated chat examples asked with fewer earlier turns than their record has, and those of them
    # that some model would have fitted with more: shortened for another model's sake
    asked = _dropped(examples, [t for t in views[0][2] if t.key in keep])
    for_others = [sum(1 for k, n in asked.items() if n > mine.get(k, 0)) for mine in own]
    trimmed = sum(1 for n in asked.values() if n)
    shortened = sum(1 for k, n in asked.items() if any(n > mine.get(k, 0) for mine in own))
    if shortened:
        progress.message(
            f"{shortened} of {len(order)} chat examples were asked with fewer earlier turns than some model "
            "could take: every model is asked the history that fits all of them (--max-length, context, tokenizer)"
        )
    results = []
    for (entry, name, tokenized, rep, view_tok, _, _), mine in zip(views, for_others, strict=True):
        if isinstance(entry, tuple):
            _, model, tok = entry
        else:
            progress.message(f"loading {name}")
            model, tok = load_policy(name, tokenizer=view_tok)  # the tokenizer the prompts were made with
            if torch.cuda.is_available():
                model.to("cuda")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        res = evaluate_model(
            model,
            tok,
            examples,
            [t for t in tokenized if t.key in keep],
            tgt=tgt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            system_prompt=system_prompt,
            progress=progress,
            name=name,
            data_report=report,
        )
        res["skipped"] = dict(rep.skipped)
        res["histories_trimmed_for_others"] = mine
        results.append(res)
    full = {
        "tgt": tgt,
        "records": report.records,
        "usable": len(order),
        "records_evaluated": len({index for index, _ in order}),
        "examples_beyond_limit": beyond,
        "skipped": skipped,
        "skipped_first_lines": first_lines,
        "exchanges_skipped": exchanges,
        "histories_trimmed": trimmed,
        "histories_trimmed_for_other_models": shortened,
        "max_new_tokens": max_new_tokens,
        "models": results,
    }
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(full, indent=2, ensure_ascii=False), encoding="utf-8")
    return full


def _dropped(examples, tokenized) -> dict[tuple[int, int], int]:
    """Chat examples' oldest exchanges left out of the prompt: example key → exchanges."""
    full = {e.key: len(e.history_en) for e in examples}
    return {t.key: (full[t.key] - t.history_turns) // 2 for t in tokenized if t.history_turns is not None}


def _same_histories(views: list[list], examples, report) -> set[tuple[int, int]]:
    """Make every model's prompts the same: the keys of the examples every model fits, each chat example
    keeping the history that fits every model (the most exchanges any model leaves out, in both
    languages alike). ``views``' tokenized examples and reports are replaced in place.

    A model re-tokenized with a floor on the exchanges it leaves out leaves out at least that many; the
    floors only rise, so this ends (almost always after one more pass)."""
    drop: dict[tuple[int, int], int] = {}
    while True:
        common = set.intersection(*({t.key for t in view[2]} for view in views))
        left_out = [_dropped(examples, view[2]) for view in views]
        need = {k: max(d.get(k, 0) for d in left_out) for k in common if any(k in d for d in left_out)}
        if all(d.get(k, 0) == n for d in left_out for k, n in need.items()):
            return common
        drop = {k: max(n, drop.get(k, 0)) for k, n in {**drop, **need}.items()}
        for view, d in zip(views, left_out, strict=True):
            if any(d.get(k, 0) != n for k, n in need.items()):
                view[3] = dataclass_copy(report)
                view[2] = tokenize_examples(examples, view[5], view[6], view[3], drop=drop)


def _skip_counts(report, examples, common: set) -> tuple[dict[str, int], dict[str, list[int]], dict[str, int]]:
    """``(skipped records per reason, their first lines, skipped chat exchanges per reason)`` once the
    examples that do not fit every model (not in ``common``) are left out: a record that loses all
    its examples is a skipped record (``prompt_too_long``), one that keeps some loses exchanges only,
    and so do the exchanges that were unusable in the data (``report.exchange_problems``)."""
    skipped = Counter(report.skipped)
    first = report.as_dict()["skipped_first_lines"]
    used = {e.index for e in examples if e.key in common}
    exchanges: Counter = Counter()
    for index, reasons in report.exchange_problems.items():
        if index in used:
            exchanges.update(reasons)
    lost = Counter(e.index for e in examples if e.key not in common)
    whole = [index for index in lost if index not in used]  # in file order: examples are
    exchanges["prompt_too_long"] += sum(n for index, n in lost.items() if index in used)
    if whole:
        skipped["prompt_too_long"] += len(whole)
        lines = first.get("prompt_too_long", []) + [report.line(i) for i in whole]
        first["prompt_too_long"] = sorted(lines)[:5]
    return dict(skipped), first, dict(+exchanges)


def _tokenizer_view(entry) -> tuple[str, Any, int | None]:
    """(name, tokenizer, context length) of a model entry without loading its weights."""
    from cltx.clo.api import model_context

    if isinstance(entry, tuple):
        name, model, tok = entry
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return str(name), tok, model_context(model)
    import types

    from transformers import AutoConfig

    from cltx.models import load_tokenizer, resolve_model

    name = str(entry)
    try:
        cfg = AutoConfig.from_pretrained(resolve_model(name))
    except (OSError, ValueError, KeyError) as e:
        raise bad_arg(
            "model", name, f"cannot be loaded as a causal LM ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from e
    tok = load_tokenizer(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return name, tok, model_context(types.SimpleNamespace(config=cfg))


def known_languages() -> set[str]:
    """The language codes py3langid can return."""
    import py3langid as langid

    return {code for code, _ in langid.rank("a")}


def check_language(tgt: str) -> None:
    """Refuse a target language that the share cannot measure (it would silently read 0 %)."""
    code = _norm_lang(tgt)
    if code == "en":
        raise bad_arg("tgt", tgt, "is English, the source language; fix: pass the target language, e.g. --tgt pt")
    if code not in known_languages():
        raise bad_arg(
            "tgt",
            tgt,
            "is not a language py3langid identifies, so every answer would count as off-language; "
            "fix: pass an ISO 639-1 code such as pt, de, es (pt-BR works too)",
        )


def _report_language(data) -> str | None:
    """The ``tgt`` of the report ``cltx mt`` writes next to its output (``NAME.report.json``)."""
    if not isinstance(data, (str, Path)):
        return None
    rep = Path(data).with_suffix(".report.json")
    try:
        tgt = json.loads(rep.read_text(encoding="utf-8")).get("tgt")
    except (OSError, ValueError, AttributeError):
        return None
    return tgt if isinstance(tgt, str) else None


def dataclass_copy(report):
    import copy

    return copy.deepcopy(report)


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: answer-language shares and NLL per prompt language."""
    rows = []
    for r in result["models"]:
        rows.append(
            {
                "model": r["model"],
                "en_in_language": r["en"]["in_prompt_language"],
                "tgt_in_language": r["tgt"]["in_prompt_language"],
                "nll_en": r["en"]["nll"],
                "nll_tgt": r["tgt"]["nll"],
                "prompts": r["en"]["prompts"],
            }
        )
    return rows
