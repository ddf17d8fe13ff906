"""``cltx salt``: give an LLM a PLM's vocabulary, each new token initialised by its own fit.

Pipeline (DESIGN.md §2), cheap checks first so bad input fails before any heavy work:

1. ``check``: resolve both models, load the tokenizers (a PLM without one is an error), match
   the vocabularies (:mod:`cltx.salt.matching`; an empty overlap is an error), compare vocabulary
   sizes with the configs (tokens without embedding rows are an error), read the vectors file
   when one is given (its width is checked line by line).
2. ``load``: load the LLM (causal LM) and the PLM's input embeddings; check their shapes.
3. ``neighbours``: once for every method — SALT's sparsemax neighbours among the overlap tokens,
   WECHSEL's top-10, the old tokenizer's pieces of each new token, and a held-out split of the
   overlap tokens for a fit-quality diagnostic.
4. ``initialize(method)``: the new rows (:mod:`cltx.salt.methods`), tokens without a vector or a
   neighbour drawn from the LLM rows' mean and covariance.
5. ``apply`` / ``save``: resize the LLM's embeddings to the PLM's vocabulary (plus the LLM's bos
   when the LLM prepends one and the PLM has none apart from its eos), overlap rows copied exactly
   from the LLM, new rows written, the PLM tokenizer made causal, bos/eos/pad ids set in the config
   and generation config (no pad id in the config of a model that builds other modules from it, as
   XGLM builds its positions), the LLM's chat template carried over with its markers rewritten, paired
   or added (:mod:`cltx.salt.matching`; an added marker that is one of the LLM's end tokens ends
   generation), the token-id fields of a multimodal LLM's config (``image_token_index`` …) rewritten to
   the new ids of their tokens, which keep their LLM rows, safetensors + ``salt_report.json``.
6. ``evaluate``: bits per byte of a held-out text (total NLL in bits / total UTF-8 bytes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cltx._validate import check_fields, checked_init
from cltx.errors import CltxError, bad_arg
from cltx.progress import Progress, ensure_progress, quiet_hf_bars
from cltx.salt.matching import Matching, config_token_fields, match_vocabularies
from cltx.salt.methods import METHODS
from cltx.salt.tokenizer import SHIM_MODULE, save_tokenizer

logger = logging.getLogger(__name__)

ALL = "all"
REPORT = "salt_report.json"
EVAL_TABLE = "bits_per_byte.json"
SEED_LIMIT = 2**53
# Written into ``--out`` before the first result, so that an interrupted run's folder is still
# recognised as cltx salt's (and a rerun may reuse it).
MARKER = ".cltx-salt"
# What a run writes at the top of ``--out`` (besides the method subfolders of ``--method all``):
# a rerun removes these first, so no earlier result survives beside the new one.
OWN_FILES = (
    REPORT,
    EVAL_TABLE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    f"{SHIM_MODULE}.py",
)
OWN_GLOBS = ("model-*-of-*.safetensors",)
# Folders a run writes: transformers saves the named chat templates other than "default" there.
OWN_DIRS = ("additional_chat_templates",)
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@checked_init
@dataclass
class SaltConfig:
    """Options of a vocabulary transfer (the CLI's flags).

    Attributes:
        llm: the English-centric causal LM (embedded name, folder or hub id).
        plm: the target-language PLM whose tokenizer and input embeddings are used.
        method: one of :data:`cltx.salt.methods.METHODS`, or ``all``.
        vectors: optional fastText ``.vec`` file: the similarity space for neighbour selection.
        eval_text: optional held-out text (one document a line, or JSONL) scored in bits per byte.
        k_max / k_min / temperature: neighbour selection (sparsemax over cosine / temperature). The
            default 0.1 suits the PLM's input-embedding space, where a token's best candidates lie in
            a narrow band of cosines: at 1.0 sparsemax keeps most of the k_max candidates and the
            minimum-norm fits extrapolate (see docs/readme/salt.md for the measurements).
        ridge: absolute ridge of the per-token fits (0 = the paper's minimum-norm least squares).
        seed: seed of the random draws (``random`` and the fallback).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the kernels and the evaluation.
        wechsel_k / wechsel_temperature: WECHSEL's top-k and softmax temperature.
        holdout: overlap tokens held out to measure how well each rule predicts known rows.
    """

    llm: str = "smollm2-135m"
    plm: str = "minilm-l6"
    method: str = "salt"
    vectors: str | None = None
    eval_text: str | None = None
    k_max: int = 64
    k_min: int = 1
    temperature: float = 0.1
    ridge: float = 0.0
    seed: int = 0
    device: str = "auto"
    wechsel_k: int = 10
    wechsel_temperature: float = 0.1
    holdout: int = 1000

    def __post_init__(self):
        # Models and files may be given as paths; they are kept as strings (the report is JSON).
        for name in ("llm", "plm", "vectors", "eval_text"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        check_fields(self)
        if self.method not in (*METHODS, ALL):
            raise bad_arg("method", self.method, f"use one of {', '.join((*METHODS, ALL))}")
        for name in ("k_max", "k_min", "wechsel_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad_arg(name, v, "pass a positive integer")
        if self.k_min > self.k_max:
            raise bad_arg("k_min", self.k_min, f"must not exceed k_max={self.k_max}")
        for name in ("temperature", "wechsel_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad_arg(name, v, "pass a finite number > 0")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge >= 0):
            raise bad_arg("ridge", self.ridge, "pass a finite number ≥ 0 (0 = minimum-norm least squares)")
        # The fallback draws are seeded with seed·1000 + …, which torch's generator must still accept.
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or abs(self.seed) > SEED_LIMIT:
            raise bad_arg("seed", self.seed, f"pass an integer between -{SEED_LIMIT} and {SEED_LIMIT} (2**53)")
        if not isinstance(self.holdout, int) or self.holdout < 0:
            raise bad_arg("holdout", self.holdout, "pass a number of tokens ≥ 0")
        dev = self.device
        indexed = isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isascii() and dev[5:].isdigit()
        if not (dev in ("auto", "cpu", "cuda") or indexed):
            raise bad_arg("device", dev, "use auto, cpu, cuda or cuda:N (N a GPU index: 0, 1, …)")
        if self.vectors is not None and not Path(self.vectors).is_file():
            raise bad_arg("vectors", self.vectors, "no such file; pass a fastText .vec text file")
        if self.eval_text is not None and not Path(self.eval_text).is_file():
            raise bad_arg("eval_text", self.eval_text, "no such file; pass a text file (one document a line)")

    @property
    def methods(self) -> list[str]:
        return list(METHODS) if self.method == ALL else [self.method]


@dataclass
class Initialization:
    """The new rows of one method.

    Attributes:
        method: the rule.
        rows: (n_new, D) float32 CPU, D = the concatenated target widths, ordered like ``new``.
        source: per new token, the rule that gave its row (the method, or ``random`` fallback).
        info: diagnostics for the report (timings, residuals, hold-out quality).
    """

    method: str
    rows: Any
    source: list[str]
    info: dict = field(default_factory=dict)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise bad_arg("device", device, "CUDA is not available here; use --device cpu (or auto)")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise bad_arg("device", device, f"this machine has {n} GPU(s); use cuda:0 … cuda:{n - 1} (or auto)")
    return device


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_dtype(config):
    import torch

    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float32


class VocabularyTransfer:
    """One LLM, one PLM, one matching and one set of neighbours; any number of init methods.

    Typical use::

        t = VocabularyTransfer(SaltConfig(llm=..., plm=...))
        t.prepare()                 # check → load → neighbours
        init = t.initialize("salt")
        t.save(init, "out/")

    Args:
        config: the options.
        progress: a :class:`cltx.progress.Progress` sink (the CLI passes a rich one).
    """

    def __init__(self, config: SaltConfig, progress: Progress | None = None):
        if not isinstance(config, SaltConfig):
            raise bad_arg("config", config, "give a SaltConfig, e.g. SaltConfig(llm='smollm2-135m', plm='minilm-l6')")
        self.cfg = config
        self.progress = ensure_progress(progress)
        self.timings: dict[str, float] = {}
        self.matching: Matching | None = None
        self._resized = False
        self._checked = False
        self._loaded = False
        self._neighbours_done = False
        self._gaussian = None
        self._holdout_cache: dict[str, dict] = {}
        self._load_notes: list[str] = []

    # ----------------------------------------------------------------------------- 1. check

    def check(self) -> Matching:
        """Every cheap validation: tokenizers, matching, vocabulary sizes, the vectors file."""
        from transformers import AutoConfig, AutoTokenizer

        from cltx.models import resolve_model
        from cltx.salt import vectors as vec

        t0 = time.perf_counter()
        cfg = self.cfg
        self.llm_path = resolve_model(cfg.llm, argument="llm")
        self.plm_path = resolve_model(cfg.plm, argument="plm")
        tokenizers = {}
        self._load_notes = []
        for arg, name, path in (("llm", cfg.llm, self.llm_path), ("plm", cfg.plm, self.plm_path)):
            p = Path(path)
            if p.is_dir() and not any((p / f).exists() for f in TOKENIZER_FILES):
                raise CltxError(
                    f"{arg}={name!r}: the model folder has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])} …); "
                    f"fix: save the model's tokenizer into {path} (tokenizer.save_pretrained) "
                    "or pass a model that has one"
                )
            try:
                tok = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError, TypeError, ImportError) as e:
                if missing := _sentencepiece_needs(p):
                    model, packages = missing
                    raise CltxError(
                        f"{arg}={name!r}: its tokenizer is only a SentencePiece model ({model}, no tokenizer.json), "
                        "which transformers converts only with both the sentencepiece and protobuf packages installed "
                        f"(missing here: {', '.join(packages)}; without them it tries tiktoken and fails); "
                        f"fix: pip install {' '.join(packages)} and rerun, or pass a folder that has a tokenizer.json"
                    ) from e
                raise CltxError(
                    f"{arg}={name!r}: its tokenizer could not be loaded ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]}); fix: pass a model folder with a working tokenizer"
                ) from e
            if (cased := _cased_vocab_txt(p, tok)) is not None:
                # transformers' BERT default lower-cases: a cased vocab.txt (capitalised entries, no tokenizer
                # config saying otherwise) would never produce its capitalised tokens
                tok = AutoTokenizer.from_pretrained(path, do_lower_case=False)
                self._load_notes.append(
                    f"{arg} tokenizer: {path}/vocab.txt has no tokenizer.json or do_lower_case setting, and "
                    f"{cased:.1%} of its entries are capitalised: loaded cased (do_lower_case=False), not "
                    "transformers' lower-casing default"
                )
                logger.warning("%s", self._load_notes[-1])
            if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
                # In transformers 5 every tokenizer with a converter is a fast one: what is left (PhoBERT,
                # FlauBERT, GPT-SW3, BERT-Japanese, ByT5 …) has no `tokenizers` version at all, and saving it
                # again writes the same slow files.
                raise CltxError(
                    f"{arg}={name!r}: its tokenizer ({type(tok).__name__}) exists in transformers only as a slow "
                    "(Python) tokenizer, with no `tokenizers` version to convert it to; cltx salt reads the "
                    "tokenizer's `tokenizers` pipeline to match the vocabularies and to build the new model's "
                    f"tokenizer, so this tokenizer type is not supported; fix: pass a {arg.upper()} whose tokenizer "
                    "is a fast one (its folder has a tokenizer.json)"
                )
            tokenizers[arg] = tok
            try:
                conf = AutoConfig.from_pretrained(path)
            except (OSError, ValueError) as e:
                raise CltxError(
                    f"{arg}={name!r}: its config could not be loaded ({e}); fix: pass a model folder"
                ) from e
            rows = getattr(_text_config(conf), "vocab_size", None)
            if isinstance(rows, int) and rows < len(tok):
                raise CltxError(
                    f"{arg}={name!r}: its tokenizer has {len(tok)} tokens but the model has only {rows} embedding "
                    "rows, so some tokens have no embedding; fix: pass the model's own tokenizer (or resize the "
                    "model's embeddings to the tokenizer and save it)"
                )
            setattr(self, f"{arg}_config", conf)
        _check_causal_multimodal(self.llm_config, cfg.llm)
        self.llm_tokenizer, self.plm_tokenizer = tokenizers["llm"], tokenizers["plm"]
        if self.llm_tokenizer.pad_token is None and self.llm_tokenizer.eos_token is not None:
            self.llm_tokenizer.pad_token = self.llm_tokenizer.eos_token

        self.progress.message(f"matching {len(self.plm_tokenizer)} PLM tokens against {len(self.llm_tokenizer)}")
        m = match_vocabularies(
            self.llm_tokenizer,
            self.plm_tokenizer,
            config_tokens=config_token_fields(self.llm_config),
            llm_name=cfg.llm,
            plm_name=cfg.plm,
        )
        m.notes[:0] = self._load_notes
        if not m.basis:
            raise CltxError(
                f"plm={cfg.plm!r}: no PLM token matches an LLM token (the overlap is empty: {m.plm_family} vs "
                f"{m.llm_family}), so there is nothing to fit from; fix: use a PLM whose vocabulary shares "
                "tokens with the LLM's (same script), or check that both tokenizers are the intended ones"
            )
        if "eos" not in m.roles:
            raise CltxError(
                f"plm={cfg.plm!r}: no eos/[SEP] token could be mapped to the LLM's eos, so the new model could not "
                "stop generating; fix: use a PLM tokenizer with an eos_token or sep_token (and an LLM with an eos)"
            )
        self.matching = m

        self.vectors = None
        if cfg.vectors is not None:
            texts = {pid: f.text() for pid, f in m.forms.items() if not f.is_byte}
            found, dim = vec.load_vectors(cfg.vectors, vec.wanted_words(texts.values()))
            self.vectors = {pid: v for pid, t in texts.items() if (v := vec.lookup(found, t)) is not None}
            self.vectors_dim = dim
            if not any(pid in self.vectors for pid in m.basis):
                raise CltxError(
                    f"vectors={cfg.vectors!r}: none of the {len(m.basis)} overlap tokens has a vector, so no "
                    "neighbour can be found; fix: pass word vectors of the PLM's language"
                )
        self.timings["check"] = time.perf_counter() - t0
        self._checked = True
        return m

    # ----------------------------------------------------------------------------- 2. load

    @quiet_hf_bars()
    def load(self) -> None:
        """Load the LLM and the PLM's input embeddings; check shapes against the tokenizers."""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        if not self._checked:
            self.check()
        t0 = time.perf_counter()
        cfg, m = self.cfg, self.matching
        self.device = _resolve_device(cfg.device)
        self.progress.message(f"loading {cfg.llm} (LLM) and {cfg.plm} (PLM)")
        try:
            llm = AutoModelForCausalLM.from_pretrained(self.llm_path, dtype=_config_dtype(self.llm_config))
        except (OSError, ValueError) as e:
            raise CltxError(
                f"llm={cfg.llm!r}: could not be loaded as a causal LM ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); fix: pass a decoder-only LLM (AutoModelForCausalLM)"
            ) from e
        try:
            plm = AutoModel.from_pretrained(self.plm_path)
        except (OSError, ValueError) as e:
            raise CltxError(
                f"plm={cfg.plm!r}: could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                "fix: pass a PLM folder with its weights"
            ) from e
        inp = _embedding_matrix(llm.get_input_embeddings, "llm", cfg.llm)
        plm_emb = _embedding_matrix(plm.get_input_embeddings, "plm", cfg.plm)
        if inp.shape[0] < m.llm_size:
            raise CltxError(
                f"llm={cfg.llm!r}: {inp.shape[0]} embedding rows for {m.llm_size} tokenizer tokens; fix: pass the "
                "model's own tokenizer"
            )
        if plm_emb.shape[0] < m.plm_size:
            raise CltxError(
                f"plm={cfg.plm!r}: {plm_emb.shape[0]} embedding rows for {m.plm_size} tokenizer tokens (missing "
                "embeddings); fix: pass the PLM's own tokenizer"
            )
        out_layer = llm.get_output_embeddings()
        out = getattr(out_layer, "weight", None) if out_layer is not None else None
        if out is None:
            raise CltxError(f"llm={cfg.llm!r}: has no output embeddings (LM head); fix: pass a causal LM")
        self.tied = out.data_ptr() == inp.data_ptr()
        if not self.tied and tuple(out.shape) != tuple(inp.shape):
            raise CltxError(
                f"llm={cfg.llm!r}: output embeddings {tuple(out.shape)} do not match the input embeddings "
                f"{tuple(inp.shape)}; fix: pass a causal LM whose LM head has one row per token"
            )
        self.model = llm
        self.d_model = inp.shape[1]
        self.d_plm = plm_emb.shape[1]
        # The LLM's own rows, kept before the resize: exact copies go to the overlap tokens.
        self.llm_in = inp.detach().clone()
        self.llm_out = None if self.tied else out.detach().clone()
        blocks = [self.llm_in] + ([] if self.tied else [self.llm_out])
        self.blocks = [b.shape[1] for b in blocks]
        self.y_all = torch.cat([b.to(torch.float32) for b in blocks], dim=1).to(self.device)
        self.x_plm = plm_emb.detach().to(torch.float32).to(self.device)
        del plm
        self.timings["load"] = time.perf_counter() - t0
        self._loaded = True

    # ----------------------------------------------------------------------------- 3. neighbours

    def neighbours(self) -> None:
        """Neighbour structures shared by every method (computed once)."""
        import torch

        from cltx.kernels import select_neighbors
        from cltx.salt.methods import subword_pieces, topk_cosine

        if not self._loaded:
            self.load()
        t0 = time.perf_counter()
        cfg, m, dev = self.cfg, self.matching, self.device
        self.new_ids = list(m.new)
        self.basis_plm = torch.tensor(m.basis, dtype=torch.int64)
        self.basis_llm = torch.tensor([m.pairs[p] for p in m.basis], dtype=torch.int64)
        self.x_basis = self.x_plm[self.basis_plm.to(dev)]
        self.y_basis = self.y_all[self.basis_llm.to(dev)]
        self.x_new = self.x_plm[torch.tensor(self.new_ids, dtype=torch.int64, device=dev)]

        # Similarity space: the PLM's input embeddings, or the vectors file.
        if self.vectors is None:
            sim_new_pos = torch.arange(len(self.new_ids))
            sim_basis_pos = torch.arange(len(m.basis))
            s_new, s_basis = self.x_new, self.x_basis
        else:
            sim_new_pos = torch.tensor([i for i, p in enumerate(self.new_ids) if p in self.vectors], dtype=torch.int64)
            sim_basis_pos = torch.tensor([i for i, p in enumerate(m.basis) if p in self.vectors], dtype=torch.int64)
            s_new = _stack([self.vectors[self.new_ids[i]] for i in sim_new_pos.tolist()], self.vectors_dim, dev)
            s_basis = _stack([self.vectors[m.basis[i]] for i in sim_basis_pos.tolist()], self.vectors_dim, dev)
        self.sim_new_pos, self.sim_basis_pos = sim_new_pos, sim_basis_pos
        self.s_basis = s_basis

        n = len(self.new_ids)
        k_max = min(cfg.k_max, len(sim_basis_pos))
        k_min = min(cfg.k_min, k_max)
        self.nbr = torch.full((n, k_max), -1, dtype=torch.int64)
        self.nbr_w = torch.zeros(n, k_max, dtype=torch.float32)
        self.progress.start("neighbours", total=len(sim_new_pos), description="neighbours")
        chunk = 8192
        for s in range(0, len(sim_new_pos), chunk):
            idx, w = select_neighbors(
                s_new[s : s + chunk], s_basis, k_max=k_max, k_min=k_min, temperature=cfg.temperature
            )
            rows = sim_new_pos[s : s + chunk]
            self.nbr[rows] = _to_basis(idx.cpu(), sim_basis_pos)
            self.nbr_w[rows] = w.float().cpu()
            self.progress.advance("neighbours", idx.shape[0])
        self.progress.finish("neighbours")
        wk = min(cfg.wechsel_k, len(sim_basis_pos))
        self.top = torch.full((n, wk), -1, dtype=torch.int64)
        self.top_sim = torch.zeros(n, wk, dtype=torch.float32)
        if len(sim_new_pos):
            ti, ts = topk_cosine(s_new, s_basis, wk)
            self.top[sim_new_pos] = _to_basis(ti.cpu(), sim_basis_pos)
            self.top_sim[sim_new_pos] = ts.cpu()

        forms = [m.forms[p] for p in self.new_ids]
        self.pieces = subword_pieces(
            self.llm_tokenizer,
            [f.surface.decode("utf-8", errors="ignore") for f in forms],
            [f.word_start for f in forms],
            m.llm_family,
        )
        self._prepare_holdout()
        self.timings["neighbours"] = time.perf_counter() - t0
        self._neighbours_done = True

    def _prepare_holdout(self) -> None:
        """Hold out some overlap tokens (whose LLM rows are known) and find their neighbours among
        the rest, so every rule can be scored on rows it did not see."""
        import torch

        from cltx.kernels import select_neighbors
        from cltx.salt.methods import topk_cosine

        cfg = self.cfg
        avail = self.sim_basis_pos
        h = min(cfg.holdout, len(avail) // 5)
        self.holdout_pos = None
        if h < 1:
            return
        g = torch.Generator().manual_seed(cfg.seed + 1)
        perm = avail[torch.randperm(len(avail), generator=g)]
        held, rest = perm[:h].sort().values, perm[h:].sort().values
        # Positions of held/rest inside the similarity basis (rows of s_basis).
        where = torch.full((len(self.matching.basis),), -1, dtype=torch.int64)
        where[avail] = torch.arange(len(avail))
        s_held = self.s_basis[where[held].to(self.s_basis.device)]
        s_rest = self.s_basis[where[rest].to(self.s_basis.device)]
        k_max = min(cfg.k_max, len(rest))
        idx, w = select_neighbors(s_held, s_rest, k_max=k_max, k_min=min(cfg.k_min, k_max), temperature=cfg.temperature)
        self.holdout_pos = held
        self.holdout_nbr = _to_basis(idx.cpu(), rest)
        self.holdout_w = w.float().cpu()
        ti, ts = topk_cosine(s_held, s_rest, min(cfg.wechsel_k, len(rest)))
        self.holdout_top = _to_basis(ti.cpu(), rest)
        self.holdout_top_sim = ts.cpu()

    def prepare(self) -> None:
        """``check`` → ``load`` → ``neighbours`` (each once)."""
        if not self._checked:
            self.check()
        if not self._loaded:
            self.load()
        if not self._neighbours_done:
            self.neighbours()

    # ----------------------------------------------------------------------------- 4. initialize

    def gaussian(self):
        from cltx.salt.methods import Gaussian

        if self._gaussian is None:
            self._gaussian = Gaussian(self.y_all, self.blocks)
        return self._gaussian

    def _rows(self, method: str, *, nbr, nbr_w, top, top_sim, pieces, x_query, n: int):
        """Rows of ``method`` for ``n`` queries, and a mask of the rows it could not make (→ fallback)."""
        import torch

        from cltx.kernels import salt_fit
        from cltx.salt.methods import mean_of_pieces, sparse_combine, wechsel_weights

        dev = self.device
        if method == "salt":
            rows = salt_fit(x_query, self.x_basis, self.y_basis, nbr.to(dev), ridge=float(self.cfg.ridge)).float()
            missing = (nbr < 0).all(dim=1)
        elif method == "focus":
            rows = sparse_combine(nbr.to(dev), nbr_w.to(dev), self.y_basis)
            missing = (nbr < 0).all(dim=1)
        elif method == "wechsel":
            w = wechsel_weights(top_sim, self.cfg.wechsel_temperature)
            rows = sparse_combine(top.to(dev), w.to(dev), self.y_basis)
            missing = (top < 0).all(dim=1)
        elif method == "subword-mean":
            rows = mean_of_pieces(pieces, self.y_all)
            missing = torch.tensor([not p for p in pieces], dtype=torch.bool)
        elif method == "mean":
            rows = self.gaussian().mean_row().to(dev).expand(n, -1).clone()
            missing = torch.zeros(n, dtype=torch.bool)
        elif method == "random":
            g = torch.Generator().manual_seed(self.cfg.seed)
            rows = self.gaussian().draw(n, g)
            missing = torch.zeros(n, dtype=torch.bool)
        else:
            raise bad_arg("method", method, f"use one of {', '.join(METHODS)}")
        return rows.float().cpu(), missing.cpu()

    def initialize(self, method: str) -> Initialization:
        """The new tokens' rows by ``method``; tokens it cannot serve get a seeded random draw."""
        import torch

        from cltx.salt.methods import stats

        self.prepare()
        t0 = time.perf_counter()
        n = len(self.new_ids)
        rows, missing = self._rows(
            method,
            nbr=self.nbr,
            nbr_w=self.nbr_w,
            top=self.top,
            top_sim=self.top_sim,
            pieces=self.pieces,
            x_query=self.x_new,
            n=n,
        )
        if missing.any():
            # Seeded by (seed, method) so that every method's fallback draws are reproducible.
            g = torch.Generator().manual_seed(self.cfg.seed * 1000 + METHODS.index(method) + 7)
            rows[missing] = self.gaussian().draw(int(missing.sum()), g)
        source = [("random" if miss else method) for miss in missing.tolist()]
        if not torch.isfinite(rows).all():
            bad = int((~torch.isfinite(rows)).any(dim=1).sum())
            raise RuntimeError(f"{method}: {bad} non-finite rows (a bug: please report it)")
        info: dict[str, Any] = {"fallback_random": int(missing.sum())}
        info["init_seconds"] = time.perf_counter() - t0
        if method == "salt":
            info["neighbor_fit_residual"] = self._neighbour_residual()
        info["holdout"] = self.holdout_quality(method)
        d = self.blocks[0]
        overlap_norm = self.y_all[torch.tensor(list(self.matching.pairs.values()), device=self.device), :d].norm(dim=1)
        info["row_norms"] = {"new": stats(rows[:, :d].norm(dim=1)), "overlap": stats(overlap_norm)}
        return Initialization(method=method, rows=rows, source=source, info=info)

    def _neighbour_residual(self, sample: int = 256) -> dict:
        """Relative residual ‖X·W − Y‖/‖Y‖ of each fit on its own neighbours (a sample of tokens).

        Zero up to round-off when the neighbours are fewer than the PLM width and independent (the
        minimum-norm fit interpolates them); non-zero with ridge, or more neighbours than dimensions.
        """
        import torch

        from cltx.kernels import salt_fit
        from cltx.salt.methods import stats

        has = (self.nbr >= 0).any(dim=1).nonzero()[:, 0]
        if len(has) == 0:
            return {"count": 0}
        g = torch.Generator().manual_seed(self.cfg.seed + 2)
        pick = has[torch.randperm(len(has), generator=g)[:sample]]
        nb = self.nbr[pick]
        tok, slot = (nb >= 0).nonzero(as_tuple=True)
        basis_rows = nb[tok, slot]
        dev = self.device
        query = self.x_basis[basis_rows.to(dev)]
        pred = salt_fit(query, self.x_basis, self.y_basis, nb[tok].to(dev), ridge=float(self.cfg.ridge))
        true = self.y_basis[basis_rows.to(dev)]
        err = ((pred.float() - true) ** 2).sum(1).cpu()
        ref = (true**2).sum(1).cpu()
        num = torch.zeros(len(pick), dtype=torch.float64).index_add_(0, tok, err.double())
        den = torch.zeros(len(pick), dtype=torch.float64).index_add_(0, tok, ref.double())
        return stats((num / den.clamp(min=1e-30)).sqrt())

    def holdout_quality(self, method: str) -> dict:
        """How well ``method`` predicts held-out overlap rows: cosine (input embeddings) and
        relative error (all targets) against the LLM's true rows."""
        from cltx.salt.methods import cosine, relative_error, stats

        if method in self._holdout_cache:
            return self._holdout_cache[method]
        if self.holdout_pos is None or method == "subword-mean":
            # The old tokenizer's piece of an overlap token is the token itself: nothing to measure.
            res = {"tokens": 0, "note": "not measurable" if method == "subword-mean" else "too few overlap tokens"}
            self._holdout_cache[method] = res
            return res
        held = self.holdout_pos
        n = len(held)
        # The held-out tokens are removed from the basis by construction (neighbours among the rest).
        rows, missing = self._rows(
            method,
            nbr=self.holdout_nbr,
            nbr_w=self.holdout_w,
            top=self.holdout_top,
            top_sim=self.holdout_top_sim,
            pieces=[],
            x_query=self.x_basis[held.to(self.device)],
            n=n,
        )
        true = self.y_basis[held.to(self.device)].float().cpu()
        ok = ~missing
        d = self.blocks[0]
        res = {
            "tokens": int(ok.sum()),
            "cosine": stats(cosine(rows[ok, :d], true[ok, :d])),
            "relative_error": stats(relative_error(rows[ok], true[ok])),
        }
        self._holdout_cache[method] = res
        return res

    # ----------------------------------------------------------------------------- 5. apply / save

    def _resize(self) -> None:
        import torch

        from cltx.salt.tokenizer import causal_tokenizer

        if self._resized:
            return
        m = self.matching
        self.tokenizer = causal_tokenizer(
            self.plm_tokenizer,
            self.llm_tokenizer,
            m.roles,
            self.llm_config,
            prepend=m.prepends is not None,
            added=m.added,
            markers=m.marker_tokens,
            chat_template=m.chat_template,
        )
        if len(self.tokenizer) > m.vocab_size:
            raise RuntimeError(
                f"the new tokenizer has {len(self.tokenizer)} tokens for {m.vocab_size} embedding rows "
                "(a bug: please report it)"
            )
        model = self.model
        # Every PLM token whose row is one of the LLM's end tokens ends generation: SmolLM2's pad is
        # its eos, so the PLM's [PAD] gets the same row as [SEP] and is as likely to be generated.
        llm_eos = _id_set(self.llm_tokenizer.eos_token_id)
        llm_eos |= _id_set(getattr(_text_config(model.config), "eos_token_id", None))
        llm_eos |= _id_set(getattr(model.generation_config, "eos_token_id", None))
        eos = self.tokenizer.eos_token_id
        self.eos_ids = [eos] + sorted(p for p, q in m.pairs.items() if q in llm_eos and p != eos)
        # The PLM's tokens and the added ones (the LLM's bos where the PLM has none apart from its eos).
        model.resize_token_embeddings(m.vocab_size, mean_resizing=False)
        ids = {
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        config_ids = dict(ids)
        if built := _built_on_pad(model, getattr(_text_config(model.config), "pad_token_id", None)):
            if ids["pad_token_id"] != built[1]:
                # XGLM builds its sinusoidal position table from config.pad_token_id (that row is zeroed): a new
                # pad past the table (GPT-2's <|endoftext|>) made the saved model fail to load, and one inside it
                # would zero a used position. No pad id in the config leaves every used position as it was (they
                # start past the old pad row); the generation config and the tokenizer name the pad.
                config_ids["pad_token_id"] = None
                logger.info(
                    "config.pad_token_id: None, not %s (%s is built from it); the generation config names the pad",
                    ids["pad_token_id"],
                    built[0],
                )
        for conf in {id(c): c for c in (model.config, _text_config(model.config))}.values():
            for k, v in config_ids.items():
                setattr(conf, k, v)
            if hasattr(conf, "unk_token_id"):
                conf.unk_token_id = self.tokenizer.unk_token_id
        # A multimodal config's placeholder ids (image_token_index …) name the tokens that kept their rows.
        kept = [e["id"] for e in m.config_tokens if e["id"] is not None]
        if any(i >= m.vocab_size for i in kept):
            raise RuntimeError(f"config token ids {kept} lie past the {m.vocab_size} rows (a bug: please report it)")
        for path, value in m.config_ids.items():
            _set_config_field(model.config, path, value)
        gen = model.generation_config
        if gen is not None:
            for k, v in ids.items():
                setattr(gen, k, v)
            gen.eos_token_id = self.eos_ids if len(self.eos_ids) > 1 else eos
            for k in ("decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id"):
                if getattr(gen, k, None) is not None:
                    setattr(gen, k, None)
        pairs = m.pairs
        self.pair_plm = torch.tensor(list(pairs.keys()), dtype=torch.int64)
        self.pair_llm = torch.tensor(list(pairs.values()), dtype=torch.int64)
        covered = set(pairs) | set(self.new_ids)
        self.mean_ids = torch.tensor(sorted(set(range(m.vocab_size)) - covered), dtype=torch.int64)
        self._resized = True

    def apply(self, init: Initialization):
        """Write ``init``'s rows (and the exact overlap rows) into the model; return the model."""
        import torch

        self._resize()
        model = self.model
        inp = model.get_input_embeddings().weight
        out_w = model.get_output_embeddings().weight
        d = self.blocks[0]
        mean = self.gaussian().mean_row()
        new = torch.tensor(self.new_ids, dtype=torch.int64)
        targets = [(inp, self.llm_in, slice(0, d))]
        if not self.tied:
            if out_w.data_ptr() == inp.data_ptr():
                raise RuntimeError("untied LLM got tied embeddings after the resize (a bug: please report it)")
            targets.append((out_w, self.llm_out, slice(d, 2 * d)))
        with torch.no_grad():
            for weight, original, cols in targets:
                dev = weight.device
                weight[self.pair_plm.to(dev)] = original[self.pair_llm.to(original.device)].to(dev)
                if len(new):
                    weight[new.to(dev)] = init.rows[:, cols].to(device=dev, dtype=weight.dtype)
                if len(self.mean_ids):
                    weight[self.mean_ids.to(dev)] = mean[cols].to(device=dev, dtype=weight.dtype)
        return model

    def report(self, init: Initialization) -> dict:
        """The ``salt_report.json`` content for ``init``."""
        m = self.matching
        conv = self.plm_tokenizer.convert_ids_to_tokens
        basis = m.basis
        tokens = []
        for i, pid in enumerate(self.new_ids):
            entry: dict[str, Any] = {"id": pid, "token": conv(pid), "init": init.source[i]}
            if init.method in ("salt", "focus"):
                valid = self.nbr[i] >= 0
                entry["neighbors"] = [basis[j] for j in self.nbr[i][valid].tolist()]
                entry["weights"] = [round(w, 5) for w in self.nbr_w[i][valid].tolist()]
            elif init.method == "wechsel":
                valid = self.top[i] >= 0
                entry["neighbors"] = [basis[j] for j in self.top[i][valid].tolist()]
                entry["similarities"] = [round(w, 5) for w in self.top_sim[i][valid].tolist()]
            elif init.method == "subword-mean":
                entry["llm_pieces"] = self.pieces[i]
            tokens.append(entry)
        for pid in self.mean_ids.tolist():
            entry = {"id": pid, "token": conv(pid), "init": "mean"}
            if pid in m.unmapped_specials:
                entry["reason"] = "special token with no LLM role"
            tokens.append(entry)
        nbr_count = (self.nbr >= 0).sum(1)
        from cltx.salt.methods import stats

        return {
            "method": init.method,
            "llm": self.cfg.llm,
            "plm": self.cfg.plm,
            "config": asdict(self.cfg),
            "similarity_space": "vectors" if self.vectors is not None else "plm-input-embeddings",
            "vectors_found": None if self.vectors is None else len(self.vectors),
            **m.summary(),
            "generation_eos_ids": self.eos_ids,
            "tied_embeddings": self.tied,
            "d_llm": self.d_model,
            "d_plm": self.d_plm,
            "fit_targets": ["input_embeddings"] + ([] if self.tied else ["output_embeddings"]),
            "neighbor_counts": stats(nbr_count[nbr_count > 0].float()),
            "no_neighbors": int((nbr_count == 0).sum()),
            "fallback_random": init.info.get("fallback_random", 0),
            "diagnostics": {k: v for k, v in init.info.items() if k not in ("init_seconds", "fallback_random")},
            "timings": {**self.timings, "init": init.info.get("init_seconds")},
            "tokens": tokens,
        }

    @quiet_hf_bars()
    def save(self, init: Initialization, out: str | Path, *, extra: dict | None = None) -> Path:
        """Write the model, the causal tokenizer and ``salt_report.json`` to ``out``."""
        self.apply(init)
        t0 = time.perf_counter()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        reload = save_tokenizer(self.tokenizer, out)
        rep = self.report(init)
        rep.update(reload)
        rep["timings"]["save"] = time.perf_counter() - t0
        if extra:
            rep.update(extra)
            if isinstance(extra.get("eval"), dict) and "seconds" in extra["eval"]:
                rep["timings"]["eval"] = extra["eval"]["seconds"]
        (out / REPORT).write_text(json.dumps(rep, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return out

    # ----------------------------------------------------------------------------- 6. evaluate

    def evaluate(self, docs: list[str], *, original: bool = False) -> dict:
        """Bits per byte of ``docs`` with the current new model, or (``original``) the untouched LLM
        with its own tokenizer (only before the first :meth:`apply`)."""
        from cltx.pretrain import bits_per_byte

        if isinstance(docs, str) or not all(isinstance(d, str) for d in docs):
            raise bad_arg("docs", docs, "give a list of strings (documents), e.g. evaluate(['one text', 'another'])")
        docs = list(docs)
        if original:
            if self._resized:
                raise RuntimeError("the original LLM can only be scored before the first apply()")
            tok = self.llm_tokenizer
        else:
            self._resize()
            tok = self.tokenizer
        self.model.to(self.device)
        t0 = time.perf_counter()
        res = bits_per_byte(self.model, tok, docs)
        res["seconds"] = time.perf_counter() - t0
        # Text the tokenizer cannot spell becomes one unk token that stands for all its bytes: it
        # makes bits per byte look better than the model is (bits_per_byte counts them for the report).
        if res.get("unk_tokens"):
            logger.warning(
                "eval_text: %d of %d tokens are %s (text this tokenizer cannot represent, scored as one "
                "token each), so its bits per byte are optimistic",
                res["unk_tokens"],
                res["tokens"],
                tok.unk_token,
            )
        return res


def _cased_vocab_txt(folder: Path, tok) -> float | None:
    """The share of capitalised entries when ``tok`` lower-cases only by transformers' default: a folder
    with a WordPiece ``vocab.txt``, no ``tokenizer.json`` and no ``do_lower_case`` in a tokenizer config,
    whose vocabulary is cased (≥ 1% of its entries hold an upper-case letter; an uncased one has a
    handful, e.g. MiniLM's 2 of 30,522: ``ℝ``). None when nothing needs changing."""
    from cltx.salt.matching import lowercases

    if not (folder.is_dir() and (folder / "vocab.txt").is_file()) or (folder / "tokenizer.json").exists():
        return None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        return None  # a slow-only tokenizer (PhoBERT's vocab.txt too) is refused by the caller with its reason
    conf = folder / "tokenizer_config.json"
    if conf.is_file():
        try:
            if "do_lower_case" in json.loads(conf.read_text(encoding="utf-8")):
                return None
        except (OSError, ValueError):
            return None
    if not lowercases(tok):
        return None
    words = [w for w in tok.get_vocab() if not (w.startswith("[") and w.endswith("]"))]
    share = sum(any(c.isupper() for c in w) for w in words) / max(len(words), 1)
    return share if share >= 0.01 else None


def _sentencepiece_needs(folder: Path) -> tuple[str, list[str]] | None:
    """``(model file, missing packages)`` when ``folder``'s tokenizer is a SentencePiece model without a
    tokenizer.json, which transformers cannot read without the sentencepiece and protobuf packages."""
    from importlib.util import find_spec

    if not folder.is_dir() or (folder / "tokenizer.json").exists():
        return None
    model = next((f for f in SENTENCEPIECE_FILES if (folder / f).is_file()), None)
    if model is None:
        return None
    missing = []
    for package, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf")):
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # google installed without protobuf
            found = False
        if not found:
            missing.append(package)
    return (model, missing) if missing else None


def _built_on_pad(model, pad) -> tuple[str, int] | None:
    """``(module name, pad)`` of a module other than the token embeddings that the model builds from
    ``config.pad_token_id`` (XGLM's sinusoidal positions), or None."""
    if pad is None:
        return None
    skip = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    for name, module in model.named_modules():
        # Leaves only: LlamaModel and the like keep a padding_idx of their own, read by nothing.
        leaf = next(module.children(), None) is None
        if leaf and id(module) not in skip and getattr(module, "padding_idx", None) == pad:
            return name, pad
    return None


def _check_causal_multimodal(config, name: str) -> None:
    """Refuse, before any loading, a multimodal LLM whose config AutoModelForCausalLM does not load (Llava,
    Qwen2-VL): its vocabulary could not be swapped, and the load step would only say it is no causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    encoders = [k for k in ("vision_config", "audio_config", "speech_config") if getattr(config, k, None) is not None]
    if not encoders or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return
    raise CltxError(
        f"llm={name!r}: a multimodal model (model_type {model_type!r}, with a {encoders[0]}) that "
        "AutoModelForCausalLM does not load, so cltx salt cannot swap its vocabulary; fix: pass its language model "
        "saved on its own as a causal LM (AutoModelForCausalLM.from_config(config.text_config) given the language "
        "model's weights, and the tokenizer), or a multimodal model that AutoModelForCausalLM loads (Gemma-3)"
    )


def _set_config_field(config, path: str, value) -> None:
    """Set ``path`` (``"image_token_index"``, ``"text_config.image_token_id"``) of the model's config to ``value``
    (ids of the new vocabulary); a sub-config the loaded model's config lacks is skipped (a text-only model)."""
    *parents, name = path.split(".")
    conf = config
    for parent in parents:
        conf = getattr(conf, parent, None)
    if conf is None or not hasattr(conf, name):
        logger.info("config: %s is not in the loaded model's config; nothing to rewrite", path)
        return
    setattr(conf, name, value)


def _id_set(value) -> set[int]:
    """Token ids from a config field that holds an id, a list of ids, or nothing."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) for v in values if isinstance(v, int)}


def _embedding_matrix(getter, arg: str, name: str):
    try:
        layer = getter()
    except (NotImplementedError, AttributeError) as e:
        raise CltxError(f"{arg}={name!r}: the model exposes no input embeddings; fix: pass a transformer LM") from e
    w = getattr(layer, "weight", None)
    if w is None or w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise CltxError(
            f"{arg}={name!r}: the model has no usable input embedding matrix ({getattr(w, 'shape', None)}); "
            "fix: pass a model with a token embedding layer"
        )
    return w


def _stack(vectors: list, dim: int, device: str):
    import numpy as np
    import torch

    if not vectors:
        return torch.empty(0, dim, dtype=torch.float32, device=device)
    return torch.from_numpy(np.stack(vectors)).to(device=device, dtype=torch.float32)


def _to_basis(idx, positions):
    """Map indices into a subset of the basis back to basis positions (keeping -1)."""
    import torch

    if idx.numel() == 0:
        return idx
    mapped = positions[idx.clamp(min=0)]
    return torch.where(idx >= 0, mapped, torch.full_like(idx, -1))


# --------------------------------------------------------------------------------- entry point


def _is_salt_output(p: Path) -> bool:
    """Whether a folder was written by ``cltx salt`` (also an interrupted run's)."""
    if any((p / name).exists() for name in (MARKER, REPORT, EVAL_TABLE)):
        return True
    return any((p / m / REPORT).exists() for m in METHODS)


def check_out_dir(out: str | Path) -> Path:
    """An output folder must be new, empty, or an earlier ``cltx salt`` output (never clobber others)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise bad_arg("out", str(out), "is a file; pass a folder path")
    if p.is_dir() and any(p.iterdir()) and not _is_salt_output(p):
        raise bad_arg("out", str(out), "exists and holds other files; pass a new or empty folder")
    return p


def _make_out_dir(out: Path) -> bool:
    """Create ``out`` now (before any heavy work), so an impossible path fails at once; True if created."""
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
    except OSError as e:
        why = e.strerror or str(e)
        raise bad_arg("out", str(out), f"cannot create the folder ({why}); pass a writable folder path") from e
    return True


def clear_earlier_output(out: str | Path) -> None:
    """Remove an earlier ``cltx salt`` run's results from ``out`` (its model, tokenizer, report,
    bits-per-byte table, method subfolders) and mark the folder as this run's. Other files stay."""
    import shutil

    p = check_out_dir(out)
    p.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (p / name).unlink(missing_ok=True)
    for pattern in OWN_GLOBS:
        for f in p.glob(pattern):
            f.unlink()
    for name in OWN_DIRS:
        if (p / name).is_dir():
            shutil.rmtree(p / name)
    for m in METHODS:
        if (p / m).is_dir():
            shutil.rmtree(p / m)
    (p / MARKER).write_text("written by cltx salt; a rerun of cltx salt may replace this folder's results\n")


@quiet_hf_bars()
def transfer_vocabulary(config: SaltConfig, out: str | Path, *, progress: Progress | None = None) -> dict:
    """Run ``cltx salt``: initialise with one method (saved in ``out``) or all (``out/<method>/``).

    When ``config.eval_text`` is set (or ``method`` is ``all``, which defaults to the packaged
    English text ``cltx/data/eval_en.txt``), score every result in bits per byte before any
    training, plus the untouched LLM with its own tokenizer for reference, and write the table to
    ``out/bits_per_byte.json``.

    Returns:
        ``{"out": str, "methods": {method: {"path", "bits_per_byte", "holdout_cosine", …}},
        "llm_bits_per_byte": float | None, "matching": {...}, "timings": {...}}``.
    """
    from cltx.paths import data_file
    from cltx.pretrain import read_documents

    progress = ensure_progress(progress)
    if not isinstance(config, SaltConfig):
        raise bad_arg("config", config, "give a SaltConfig, e.g. SaltConfig(llm='smollm2-135m', plm='minilm-l6')")
    out = check_out_dir(out)
    for arg, name in (("llm", config.llm), ("plm", config.plm)):
        src = Path(name).expanduser()
        if src.is_dir() and out.is_dir() and src.resolve() == out.resolve():
            raise bad_arg("out", str(out), f"is the {arg} folder itself; pass a new folder for the result")
    eval_path = config.eval_text
    if eval_path is None and config.method == ALL:
        eval_path = str(data_file("eval_en.txt"))
    docs = read_documents(eval_path, argument="eval_text") if eval_path else None
    created = _make_out_dir(out)
    try:
        return _transfer(config, out, eval_path, docs, progress)
    except BaseException:
        # A failed first run leaves no empty folder behind.
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _transfer(config: SaltConfig, out: Path, eval_path: str | None, docs: list[str] | None, progress) -> dict:
    t = VocabularyTransfer(config, progress)
    progress.start("salt", total=3 + 2 * len(config.methods), description="salt")
    t.check()
    progress.advance("salt")
    t.load()
    progress.advance("salt")
    summary: dict[str, Any] = {"out": str(out), "matching": t.matching.summary(), "methods": {}, "eval_text": eval_path}
    if docs is not None:
        progress.message("scoring the original LLM with its own tokenizer")
        base = t.evaluate(docs, original=True)
        summary["llm_bits_per_byte"] = base["bits_per_byte"]
        summary["llm_eval"] = base
    t.neighbours()
    progress.advance("salt")
    # Every check has passed: only now is an earlier run's result replaced.
    clear_earlier_output(out)
    for method in config.methods:
        progress.message(f"initialising with {method}")
        init = t.initialize(method)
        target = out / method if config.method == ALL else out
        t.apply(init)
        ev = t.evaluate(docs) if docs is not None else None
        progress.advance("salt")
        t.save(init, target, extra={"eval": ev, "eval_text": eval_path} if ev else None)
        progress.advance("salt")
        hold = init.info.get("holdout", {})
        summary["methods"][method] = {
            "path": str(target),
            "bits_per_byte": ev["bits_per_byte"] if ev else None,
            "loss": ev["loss"] if ev else None,
            "eval_tokens": ev["tokens"] if ev else None,
            "holdout_cosine": (hold.get("cosine") or {}).get("mean"),
            "holdout_relative_error": (hold.get("relative_error") or {}).get("mean"),
            "fallback_random": init.info.get("fallback_random", 0),
            "init_seconds": init.info.get("init_seconds"),
        }
    progress.finish("salt")
    summary["timings"] = dict(t.timings)
    if docs is not None:
        (out / EVAL_TABLE).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
