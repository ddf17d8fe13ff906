"""The report's claim checks and rendering, on hand-made stage results (no models)."""

from __future__ import annotations

import math

from cltx.report import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, build_report, compare, render_markdown


def test_compare_direction_ties_and_missing():
    assert compare("p", "c", "a", 1.0, "b", 2.0, lower_is_better=True)["verdict"] == REPRODUCED
    assert compare("p", "c", "a", 1.0, "b", 2.0, lower_is_better=False)["verdict"] == NOT_REPRODUCED
    assert compare("p", "c", "a", 0.5, "b", 0.5, lower_is_better=False)["verdict"] == INCONCLUSIVE
    assert compare("p", "c", "a", 0.50, "b", 0.51, lower_is_better=True, tolerance=0.05)["verdict"] == INCONCLUSIVE
    assert compare("p", "c", "a", None, "b", 0.5, lower_is_better=True)["verdict"] == INCONCLUSIVE
    assert compare("p", "c", "a", math.nan, "b", 0.5, lower_is_better=True)["verdict"] == INCONCLUSIVE
    c = compare("p", "c", "salt", 1.2, "focus", 1.5, lower_is_better=True)
    assert c["check"] == "salt < focus" and c["salt"] == 1.2 and c["focus"] == 1.5
    assert math.isclose(c["difference"], -0.3)


def _results():
    curve = lambda start: [  # noqa: E731
        {"step": i, "tokens": 128 * i, "loss": start - 0.1 * i, "learning_rate": 1e-4} for i in range(1, 5)
    ]
    pre = lambda start, after: {  # noqa: E731
        "loss_curve": curve(start),
        "tokens_trained": 512,
        "steps": 4,
        "eval_before": {"bits_per_byte": start / 3},
        "eval_after": {"bits_per_byte": after},
    }
    ev = lambda t, e, nt, ne: {  # noqa: E731
        "target_prompt_share": t,
        "english_prompt_share": e,
        "nll_target": nt,
        "nll_english": ne,
    }
    return {
        "mt": {"records": 10, "joint_success_rate": 0.9, "fallbacks": 1, "failures": 0, "records_per_s": 5.0,
               "qa": {"qa_records": 4, "share": 0.75}, "engine": "x", "train_records": 8, "heldout_records": 2},
        "mt-separate": {"records": 10, "failures": 0, "records_per_s": 9.0, "qa": {"qa_records": 4, "share": 0.5}},
        "salt": {"bits_per_byte": {"salt": 1.1, "focus": 1.3, "random": 2.0}, "base_bits_per_byte": 1.0,
                 "note": "English vocabulary swap"},
        "pretrain-salt": pre(3.0, 1.0),
        "pretrain-focus": pre(3.5, 1.2),
        "pretrain-random": pre(5.0, 1.1),
        "clo": {"method": "clo", "curve": [{"step": 1, "loss": 2.0, "margin": 0.1}], "records": 8},
        "sft": {"method": "sft", "curve": [{"step": 1, "loss": 2.5, "margin": None}], "records": 8},
        "eval": {"models": {"base": ev(0.2, 1.0, 3.0, 2.0), "clo": ev(0.8, 1.0, 2.5, 2.1),
                            "sft": ev(0.6, 0.9, 2.4, 2.2), "clo-half": ev(0.6, 1.0, 2.6, 2.1)}},
    }  # fmt: skip


def test_build_report_sections_and_verdicts():
    rep = build_report(_results(), {"mt": {"reused": False, "wall_s": 1.0}}, {"device": "cpu"}, {"out": "x"})
    assert rep["mt"]["joint"]["qa_answer_in_passage_share"] == 0.75
    assert rep["claims"][0]["verdict"] == REPRODUCED  # 0.75 > 0.5
    salt = rep["salt"]
    assert salt["continued_training"]["salt"]["first_loss"] == 2.9 and salt["same_token_budget"]
    # salt beats focus and random at init; after training salt 1.0 < focus 1.2 and < random 1.1.
    salt_claims = [c for c in rep["claims"] if c["paper"].startswith("SALT")]
    assert len(salt_claims) == 6 and all(c["verdict"] == REPRODUCED for c in salt_claims)
    clo = [c for c in rep["claims"] if c["paper"].startswith("CLO")]
    assert len(clo) == 6
    target = next(c for c in clo if c["check"] == "clo > sft" and "target-language prompts" in c["claim"])
    assert target["verdict"] == REPRODUCED  # 0.8 > 0.6
    assert next(c for c in clo if c["check"] == "clo > base")["verdict"] == REPRODUCED
    half = next(c for c in rep["claims"] if c["check"] == "clo-half > sft")
    assert half["verdict"] == INCONCLUSIVE  # 0.6 vs 0.6: a tie says nothing
    nll = next(c for c in rep["claims"] if c["check"] == "clo < sft" and "target-language NLL" in c["claim"])
    assert nll["verdict"] == NOT_REPRODUCED  # 2.5 > 2.4
    md = render_markdown({**rep, "environment": {"device": "cpu"}})
    assert "**not reproduced**" in md and "English vocabulary swap" in md and "| salt | 1.100 |" in md


def test_report_without_optional_stages():
    res = {k: v for k, v in _results().items() if k in ("mt",)}
    rep = build_report(res, {}, {"device": "cpu"}, {"out": "x"})
    assert rep["salt"] == {} and rep["clo"] == {} and "separate" not in rep["mt"]
    assert rep["claims"] == []
    assert "## MT" in render_markdown(rep)
