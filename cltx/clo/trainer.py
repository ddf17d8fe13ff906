"""``CLOTrainer``: Cross-Lingual Optimization on the Hugging Face ``Trainer``.

What the Trainer brings unchanged: bf16 autocast, activation checkpointing, gradient accumulation,
checkpoints and resume, DDP/FSDP through ``accelerate launch`` / ``torchrun``. What this file adds:

* the data arrive as fixed micro-batches of whole records ("bins", :mod:`cltx.clo.data`), one bin
  per device per micro-step, shuffled per epoch by a seeded sampler that is the same on every rank;
* reference log-probs: computed once, before training, by the starting model through the very
  forward the policy uses (same bins, same grad mode, same autocast), so every reward is exactly
  zero at step 0; cached under the cltx cache dir keyed by (model fingerprint, bins hash — which
  covers data, template, max length and batching — method options, precision, device); no
  reference model stays in memory;
* normalisation over the whole optimizer step: the NLL term is a token mean and the CL term a pair
  mean over *all* micro-batches of the step on *all* ranks (the counts are summed across ranks
  before the step's first forward), so a 2-rank DDP run equals a 1-rank run over the same global
  batches;
* TRL-named metrics (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
  logps/chosen, logps/rejected, nll, cl) and saving as safetensors with the tokenizer.

Under FSDP (``fsdp=True`` or an accelerate FSDP config; FSDP2 is transformers' default) the model is
not on its device when the Trainer is built and may be empty on all ranks but the first
(``cpu_ram_efficient_loading``), so the reference pass waits for the wrapped, sharded model at the
start of ``train()`` (every rank runs the same number of forwards: each is collective); the cache
key is computed on rank 0 and broadcast; the final save gathers the full state dict on every rank
and writes it from rank 0 (LoRA merged on a CPU copy). accelerate (1.15) runs FSDP only on
accelerator devices: on the CPU it would train with DDP instead, so asking for FSDP there is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import ParallelMode

from cltx._validate import TRAINING_NUMBERS, check_fields, checked_init
from cltx.checkpoints import strategy_name
from cltx.clo.data import bins_hash, check_max_length
from cltx.clo.model import (
    METHODS,
    TRAIN_MODES,
    CLOModel,
    causal_lm,
    check_logits_path,
    disable_dropout,
    merge_lora_state_dict,
    model_files_fingerprint,
    model_fingerprint,
    pack_reference,
    set_trainable,
)
from cltx.errors import CltxError, bad_arg
from cltx.paths import cache_dir
from cltx.progress import Progress, ensure_progress

logger = logging.getLogger(__name__)

REF_CACHE_VERSION = 1

# In every checkpoint: the identity of the run that wrote it (CLOTrainer.run_identity).
RUN_FILE = "clo_run.json"

# How many micro-batches the reference pass has run in this process (tests read it).
REF_FORWARD_CALLS = 0

_PAIR_METRICS = {
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "margins",
    "logps/chosen": "chosen_logps",
    "logps/rejected": "rejected_logps",
}

# How a changed part of the run identity is named in the refusal of --resume.
_IDENTITY_WORDS = {
    "weights": "the starting --model's weights",
    "model_files": "the starting --model's files (config and weights)",
    "data": "the training micro-batches (--data, --max-length, --batch-size, --seed, chat template or field options)",
}


def options_identity(args: CLOConfig, processes: int) -> dict:
    """The part of a run's identity that the options alone fix (no model, no data): the method and
    the options that shape the loss or the optimizer state."""
    return {
        "method": args.method,
        "train": args.train_mode,
        "lora_r": args.lora_r if args.train_mode == "lora" else None,
        "lam": args.lam,
        "beta": args.beta,
        "average_logps": args.average_logps,
        "grad_accum": args.gradient_accumulation_steps,
        "processes": processes,
    }


def read_run_file(checkpoint: str | os.PathLike) -> dict | None:
    """The ``clo_run.json`` of a checkpoint (None: none there, e.g. written before run files existed)."""
    f = Path(checkpoint) / RUN_FILE
    if not f.is_file():
        return None
    try:
        saved = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def run_mismatch(checkpoint: str | os.PathLike, now: dict) -> str | None:
    """The refusal of resuming ``checkpoint`` in the run described by ``now`` (None: the same run, as
    far as both know). ``model_files`` is compared only when both runs know it (a model built in
    memory has none)."""
    saved = read_run_file(checkpoint)
    if saved is None:
        return None
    unknown = {k for k in ("model_files",) if saved.get(k) is None or now.get(k) is None}
    changed = [k for k in now if k in saved and k not in unknown and saved[k] != now[k]]
    if not changed:
        return None
    what = "; ".join(_IDENTITY_WORDS.get(k, f"{k} {saved[k]!r} → {now[k]!r}") for k in changed)
    return (
        f"resume={str(checkpoint)!r}: this is not the run that wrote the checkpoint ({what} changed); "
        "fix: rerun with the first run's options, or drop --resume and pass a new --out"
    )


def check_resume_options(checkpoint: str | os.PathLike, args: CLOConfig, *, model_source=None) -> None:
    """Refuse resuming ``checkpoint`` with other options or another saved model, before the model
    loads (the weights and the micro-batches are compared again by :class:`CLOTrainer`, before its
    reference pass). ``model_source``: the folder or hub id the model will be loaded from."""
    now = {**options_identity(args, args.world_size), "model_files": model_files_fingerprint(model_source)}
    msg = run_mismatch(checkpoint, now)
    if msg:
        raise CltxError(msg)


_TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))
# The names this config's errors use (the CLI's and train_clo's), where they differ from the field's.
_CLI_NAMES = {
    "train_mode": "train",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
}


@checked_init
@dataclasses.dataclass
class CLOConfig(TrainingArguments):
    """Training arguments for CLO / SFT. ``per_device_train_batch_size`` counts *records* per
    micro-batch (a CLO record is two preference pairs, four sequences; an SFT record two sequences).

    Attributes:
        method: ``clo`` (λ·NLL + (1 − λ)·CL) or ``sft`` (NLL of both directions' chosen responses).
        lam: λ, the weight of the target-language NLL term (paper: 0.5).
        beta: β of the contrastive (DPO-style) term.
        average_logps: mean instead of sum of response log-probs in the CL term.
        memory_budget_gib: working memory of the fused loss (None = the kernel's default).
        train_mode: ``attention`` (q/k/v/o only, the paper's), ``full`` or ``lora``.
        max_length: prompt + response tokens; longer responses are cut, longer prompts skipped.
        lora_r, lora_alpha: LoRA rank and scale for ``train_mode='lora'``.
        pad_to_multiple_of: pad micro-batches to this length multiple.
        ref_cache: reuse cached reference log-probs (and write them).

    FSDP: ``fsdp=True`` (FSDP2, full shard, each decoder layer its own unit) with optional
    ``fsdp_config`` (a dict or a JSON file of transformers' ``fsdp_config`` keys); needs a distributed
    launch (``torchrun`` / ``accelerate launch``) on GPUs.
    """

    method: str = "clo"
    lam: float = 0.5
    beta: float = 0.1
    average_logps: bool = False
    memory_budget_gib: float | None = None
    train_mode: str = "attention"
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    pad_to_multiple_of: int = 8
    ref_cache: bool = True

    def __post_init__(self):
        # Types first: lr="1e-4" was a TypeError from a comparison below or deep in the Trainer.
        own = [f.name for f in dataclasses.fields(CLOConfig) if f.name not in _TRAINING_FIELDS]
        check_fields(self, only=[*own, *TRAINING_NUMBERS], names=_CLI_NAMES)
        if self.method not in METHODS:
            raise bad_arg("method", self.method, f"choose one of {', '.join(METHODS)}")
        if self.train_mode not in TRAIN_MODES:
            raise bad_arg("train", self.train_mode, f"choose one of {', '.join(TRAIN_MODES)}")
        if not 0.0 <= self.lam <= 1.0:
            raise bad_arg("lam", self.lam, "must be in [0, 1] (0.5 in the paper)")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise bad_arg("beta", self.beta, "must be a finite number > 0 (default 0.1)")
        check_max_length(self.max_length)
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise bad_arg("memory_budget_gib", self.memory_budget_gib, "must be > 0 GiB (or unset)")
        if self.lora_r < 1:
            raise bad_arg("lora_r", self.lora_r, "must be ≥ 1")
        self._check_training_numbers()
        self._check_fsdp_config()
        # The CLI draws its own progress (cltx.progress.trainer_callback); bins are not columns.
        self.disable_tqdm = True
        self.remove_unused_columns = False
        if self.report_to is None or self.report_to == "all":
            self.report_to = "none"
        super().__post_init__()
        if self.fsdp and self.parallel_mode != ParallelMode.DISTRIBUTED:
            raise bad_arg(
                "fsdp",
                self.fsdp,
                "FSDP shards the model over several processes; fix: launch with "
                "`torchrun --nproc_per_node N -m cltx.cli.main clo … --fsdp` (or `accelerate launch`), or drop --fsdp",
            )

    def _check_training_numbers(self) -> None:
        """House-style errors for the Trainer numbers the CLI passes through (transformers and torch
        would raise a bare traceback, or silently train zero steps)."""
        if self.gradient_accumulation_steps < 1:
            raise bad_arg("grad_accum", self.gradient_accumulation_steps, "must be ≥ 1 (micro-batches per step)")
        lr = self.learning_rate
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise bad_arg("lr", lr, "must be a finite number > 0, e.g. 2e-5")
        if self.warmup_steps < 0:
            raise bad_arg("warmup_steps", self.warmup_steps, "must be ≥ 0")
        if strategy_name(self.logging_strategy) == "steps" and not self.logging_steps > 0:
            raise bad_arg("logging_steps", self.logging_steps, "must be > 0 (log every N steps)")
        if not 0 <= self.seed < 2**32:
            raise bad_arg("seed", self.seed, "must be in [0, 2**32 - 1]")
        if self.max_steps == 0 or self.max_steps < -1:
            raise bad_arg("max_steps", self.max_steps, "must be > 0 (or -1: train for num_train_epochs)")
        if self.max_steps < 0 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise bad_arg("epochs", self.num_train_epochs, "must be > 0 (or give max_steps)")

    def _check_fsdp_config(self) -> None:
        """A readable error for a bad ``fsdp_config`` (transformers would raise a bare traceback)."""
        cfg = given = self.fsdp_config
        if cfg is None:
            return
        if isinstance(cfg, os.PathLike):
            cfg = given = str(cfg)
        if not self.fsdp:
            raise bad_arg("fsdp_config", given, "is used only with FSDP; fix: add --fsdp (fsdp=True) or drop it")
        if isinstance(cfg, str):
            if not Path(cfg).is_file():
                raise bad_arg("fsdp_config", given, "no such file; fix: pass a JSON file of FSDP settings")
            try:
                cfg = json.loads(Path(cfg).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise bad_arg("fsdp_config", given, f"is not valid JSON ({e}); fix: write a JSON object") from e
        if not isinstance(cfg, dict):
            raise bad_arg("fsdp_config", given, 'must be a JSON object, e.g. {"version": 2, "cpu_offload": false}')
        version = cfg.get("version", cfg.get("fsdp_version", 2))
        if str(version) not in ("1", "2"):
            raise bad_arg("fsdp_config", given, f"version {version!r} is not 1 or 2; fix: use 2 (FSDP2, the default)")
        self.fsdp_config = dict(cfg)


class BinDataset(Dataset):
    """A list of prepared micro-batches; item i is bin i."""

    def __init__(self, bins: list[dict]):
        self.bins = bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict:
        return self.bins[i]


class EpochShuffleSampler(Sampler):
    """Seeded bin order, reshuffled per epoch, identical on every rank (accelerate shards it)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


_NOT_INPUTS = ("record_index", "ref_chosen_logps", "ref_rejected_logps")


def _packed(inputs: dict) -> dict:
    """Model inputs with the reference log-probs as int32 bit patterns (:func:`pack_reference`), so a
    sharded model's input cast (FSDP2 under bf16) leaves them exact."""
    refs = ("ref_chosen_logps", "ref_rejected_logps")
    return {k: pack_reference(v) if k in refs and torch.is_tensor(v) else v for k, v in inputs.items()}


def _first(items: list[dict]) -> dict:
    return items[0]


def _pairs(b: dict) -> int:
    return int(b["nll_mask"].shape[0])


def _nll_tokens(b: dict) -> int:
    P = _pairs(b)
    chosen = b["labels"][:P]
    return int(((chosen != -100) & b["nll_mask"].to(chosen.device)[:, None]).sum())


class CLOTrainer(Trainer):
    """The HF ``Trainer`` with the CLO loss.

    Args:
        model: a ``*ForCausalLM`` (fp32 master weights recommended; ``bf16=True`` autocasts).
        args: a :class:`CLOConfig`. ``args.resume_from_checkpoint`` (a checkpoint folder, or True for
            the last one in ``output_dir``) is the checkpoint ``train()`` continues from by default; it
            is checked against this run at construction, before the reference pass (another model,
            data or options are refused at once, not after that pass).
        train_bins: micro-batches from :func:`cltx.clo.data.make_bins` (method must match ``args``).
        processing_class: the tokenizer (saved with the model).
        eval_bins: held-out micro-batches (same method), scored by :meth:`evaluate` (every
            ``args.eval_steps`` with ``eval_strategy="steps"``): their reference log-probs come from the
            same pass and cache as the training bins', so every held-out reward is exactly zero before
            the first step.
        Other keyword arguments go to ``transformers.Trainer``.

    The first and the last optimizer step are always logged (besides every ``logging_steps``), so
    every run has a first and a last logged loss. ``tokens_trained`` counts this process's
    non-padding tokens of this ``train()``; :meth:`run_tokens` is the whole run's count (all ranks,
    plus what the resumed checkpoint had trained, stored in its ``clo_run.json``).
    """

    # compute_loss normalises over the whole accumulated, all-rank batch itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: CLOConfig,
        train_bins: list[dict],
        processing_class=None,
        progress: Progress | None = None,
        eval_bins: list[dict] | None = None,
        **kwargs,
    ):
        if not isinstance(args, CLOConfig):
            raise bad_arg("args", type(args).__name__, "pass a cltx.clo.CLOConfig")
        if not train_bins:
            raise CltxError("data: no usable training records; fix: check the skip report and the field options")
        want_rows = 1 if args.method == "sft" else 2
        for name, bins in (("train_bins", train_bins), ("eval_bins", eval_bins or [])):
            if bins and bins[0]["input_ids"].shape[0] != want_rows * _pairs(bins[0]):
                raise bad_arg(name, args.method, "bins were built for the other method; rebuild with make_bins")
        if isinstance(model, CLOModel):
            wrapper = model
        else:
            from transformers import set_seed

            set_seed(args.seed)  # a LoRA adapter's initial A matrices come from this seed
            check_logits_path(model)  # before choosing parameters: "not a plain LM head" is the real error
            policy = set_trainable(model, args.train_mode, lora_r=args.lora_r, lora_alpha=args.lora_alpha)
            disable_dropout(policy)
            wrapper = CLOModel(
                policy,
                method=args.method,
                beta=args.beta,
                lam=args.lam,
                average_logps=args.average_logps,
                memory_budget_gib=args.memory_budget_gib,
            )
        self.train_bins = train_bins
        self.eval_bins = list(eval_bins or [])
        self.progress = ensure_progress(progress)
        # `accelerate launch` with an FSDP config says so in the environment (read it before the
        # Accelerator is built: accelerate sets it too whenever it is handed an FSDP plugin)
        wants_fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        super().__init__(
            model=wrapper,
            args=args,
            train_dataset=BinDataset(train_bins),
            eval_dataset=BinDataset(self.eval_bins) if self.eval_bins else None,
            processing_class=processing_class,
            **kwargs,
        )
        from transformers.trainer_callback import PrinterCallback

        self.remove_callback(PrinterCallback)  # progress goes through cltx.progress.trainer_callback
        if wants_fsdp and not self.is_fsdp_enabled:
            raise bad_arg(
                "fsdp",
                args.fsdp or "accelerate config",
                "accelerate runs FSDP only on GPUs/accelerators, here it would train with "
                f"{self.accelerator.distributed_type.value} instead; fix: drop --fsdp (plain data parallel) "
                "or run on GPUs",
            )
        self._metric_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self.ref_info: dict = {}
        self._ref_stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ref_needed: list[int] = []
        self._ref_missing: list[int] = []
        self.tokens_trained = 0
        # the whole run's tokens (all ranks) before the resumed checkpoint; None: not recorded there
        self.tokens_before: int | None = 0
        self._start_fingerprint: str | None = None
        self._identity: dict | None = None
        self.add_callback(_LogFirstAndLastStep())
        resume = self._resume_checkpoint(args.resume_from_checkpoint)
        if resume:
            # before the reference pass: resuming another run must not cost a pass over the data first
            self._check_same_run(resume)
        if args.method == "clo":
            self._prepare_reference()

    def _resume_checkpoint(self, resume) -> str | None:
        if resume is True:
            from cltx.checkpoints import last_checkpoint

            found = last_checkpoint(self.args.output_dir)
            if found is None:
                raise bad_arg("resume_from_checkpoint", True, f"no checkpoint in {self.args.output_dir} to resume")
            return found
        return str(resume) if resume else None

    # ---- data ---------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        dl = DataLoader(
            self.train_dataset,
            batch_size=1,
            sampler=EpochShuffleSampler(len(self.train_dataset), self.args.seed),
            collate_fn=_first,
            num_workers=0,
        )
        return self.accelerator.prepare(dl)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """[NLL tokens, pairs] over every micro-batch of this optimizer step, summed over ranks."""
        counts = torch.tensor(
            [[_nll_tokens(b), _pairs(b)] for b in batch_samples] or [[0, 0]], dtype=torch.float64
        ).sum(0)
        counts = counts.to(device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts

    # ---- reference log-probs --------------------------------------------------------------------

    def _ref_key(self) -> str:
        import hashlib

        wrapper = self.accelerator.unwrap_model(self.model)
        parts = {
            "v": REF_CACHE_VERSION,
            "model": self._model_fingerprint(wrapper.policy),
            "bins": bins_hash(self.train_bins),
            "average_logps": self.args.average_logps,
            "precision": "bf16" if self.args.bf16 else ("fp16" if self.args.fp16 else "fp32"),
            "device": self.args.device.type,
            "train_mode": self.args.train_mode,
        }
        if self.eval_bins:  # absent without held-out data: the keys of earlier runs stay valid
            parts["eval_bins"] = bins_hash(self.eval_bins)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _model_fingerprint(self, policy=None) -> str:
        """The starting model's fingerprint, computed once (before any step changes the weights)."""
        if self._start_fingerprint is None:
            policy = policy if policy is not None else self.accelerator.unwrap_model(self.model).policy
            self._start_fingerprint = model_fingerprint(policy)
        return self._start_fingerprint

    # ---- run identity (resume) ------------------------------------------------------------------

    def run_identity(self) -> dict:
        """What makes a checkpoint's run "the same run": the starting model, the exact micro-batches
        (data, template, max length, batch size, seed, method) and the options that shape the
        loss or the optimizer. Stored in every checkpoint; ``--resume`` refuses a mismatch."""
        if self._identity is None:

            def compute() -> dict:
                lm = causal_lm(self.accelerator.unwrap_model(self.model).policy)
                return {
                    # named "weights", not "model": run files of cd15d9e hold a fingerprint that
                    # included the load path; under the old key they are not compared (not refused)
                    "weights": self._model_fingerprint(),
                    # the files it was loaded from: lets --resume refuse another --model before loading it
                    "model_files": model_files_fingerprint(getattr(lm.config, "_name_or_path", None)),
                    "data": bins_hash(self.train_bins),
                    **options_identity(self.args, self.accelerator.num_processes),
                }

            self._identity = self._on_main_and_broadcast(compute)
        return self._identity

    def _on_main_and_broadcast(self, fn):
        """``fn()`` on rank 0, the same value on every rank (under FSDP only rank 0 may hold the
        starting weights; ranks must agree on errors or the others would hang in a collective)."""
        if self.accelerator.num_processes == 1:
            return fn()
        import torch.distributed as dist

        box = [fn() if self.accelerator.is_main_process else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _check_same_run(self, checkpoint: str) -> None:
        self.run_identity()  # every rank takes part in its broadcast
        msg = self._on_main_and_broadcast(lambda: run_mismatch(checkpoint, self.run_identity()))
        if msg:
            raise CltxError(msg)

    def session_tokens(self) -> int:
        """Every rank's ``tokens_trained`` summed: this ``train()``'s tokens. Collective: call it on
        every rank."""
        here = torch.tensor(float(self.tokens_trained), device=self.args.device)
        if self.accelerator.num_processes > 1:
            here = self.accelerator.reduce(here, reduction="sum")
        return int(here.item())

    def run_tokens(self, session: int | None = None) -> int | None:
        """The whole run's trained tokens: :meth:`session_tokens` (or ``session``, its value when the caller
        has it already) plus the resumed checkpoint's count (None when that checkpoint did not record one).
        Collective unless ``session`` is given: call it on every rank."""
        here = self.session_tokens() if session is None else session
        return None if self.tokens_before is None else self.tokens_before + here

    def needed_bins(self) -> list[int]:
        """The micro-batches this run will use: all of them, unless ``max_steps`` ends the run
        inside the first epoch (then the first ones of epoch 0's seeded order)."""
        n = len(self.train_bins)
        steps = self.args.max_steps
        if steps is None or steps <= 0:
            return list(range(n))
        k = steps * self.args.gradient_accumulation_steps * self.accelerator.num_processes
        if k >= n:
            return list(range(n))
        return sorted(list(iter(EpochShuffleSampler(n, self.args.seed)))[:k])

    def _shared_ref_key(self) -> str:
        """The cache key, computed on rank 0 and broadcast: every rank must agree on it (and under
        FSDP with ``cpu_ram_efficient_loading`` only rank 0 holds the starting weights)."""
        if self.accelerator.num_processes == 1:
            return self._ref_key()
        import torch.distributed as dist

        box = [self._ref_key() if self.accelerator.is_main_process else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _prepare_reference(self) -> None:
        """Fill the needed bins' ``ref_chosen_logps``/``ref_rejected_logps``: from the cache, and
        one forward pass of the starting model for whatever the cache lacks (then cached too).
        Under FSDP the pass waits for the wrapped model (:class:`_ReferenceAtTrainBegin`)."""
        key = self._shared_ref_key()
        path = cache_dir() / "clo" / "ref" / f"{key}.pt"
        n = len(self.train_bins)
        needed = self.needed_bins() + [n + j for j in range(len(self.eval_bins))]  # held-out bins after the train ones
        self.ref_info = {
            "key": key,
            "path": str(path),
            "cache_hit": False,
            "bins_needed": len(needed),
            "bins_computed": 0,
            "seconds": 0.0,
        }
        stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.args.ref_cache and path.exists():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)["bins"]
            except Exception as e:  # a damaged cache file is recomputed, never trusted
                logger.warning("reference cache %s unreadable (%s); recomputing", path, e)
        self._ref_stored, self._ref_needed = stored, needed
        self._ref_missing = [i for i in needed if i not in stored]
        self.ref_info["cache_hit"] = not self._ref_missing
        if self._ref_missing and self.is_fsdp_enabled:
            logger.info("reference log-probs: %d micro-batches at train start (FSDP)", len(self._ref_missing))
            self.add_callback(_ReferenceAtTrainBegin(self))
            return
        self.finish_reference()

    def finish_reference(self, model: torch.nn.Module | None = None) -> None:
        """Compute the missing reference log-probs (each rank a share, gathered), cache them and put
        them into the bins. ``model``: the FSDP-wrapped model (then every rank runs the same number of
        forwards, each being collective); default: the unwrapped model, before any wrapping."""
        missing = self._ref_missing
        if missing:
            t0 = time.perf_counter()
            world, rank = self.accelerator.num_processes, self.accelerator.process_index
            mine = missing[rank::world]
            forwards = -(-len(missing) // world) if model is not None else len(mine)
            local = self._reference_pass(mine, model=model, forwards=forwards)
            if world > 1:
                import torch.distributed as dist

                gathered: list = [None] * world
                dist.all_gather_object(gathered, local)
                for part in gathered:
                    local.update(part)
            self._ref_stored = {**self._ref_stored, **local}
            self.ref_info.update(bins_computed=len(mine), seconds=round(time.perf_counter() - t0, 3))
            path = Path(self.ref_info["path"])
            if self.args.ref_cache and self.accelerator.is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save({"bins": self._ref_stored}, tmp)
                os.replace(tmp, path)
            logger.info("reference log-probs: %d micro-batches in %.1fs", len(missing), self.ref_info["seconds"])
        else:
            logger.info("reference log-probs: cache hit %s", self.ref_info["path"])
        for i in self._ref_needed:
            self._bin(i)["ref_chosen_logps"], self._bin(i)["ref_rejected_logps"] = self._ref_stored[i]
        self._ref_missing = []

    def _bin(self, i: int) -> dict:
        """Micro-batch ``i`` of the reference pass: a training bin, or held-out bin ``i - len(train_bins)``."""
        n = len(self.train_bins)
        return self.train_bins[i] if i < n else self.eval_bins[i - n]

    def _reference_pass(
        self, indices: list[int], *, model: torch.nn.Module | None = None, forwards: int | None = None
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Log-probs of the starting model on bins ``indices``, through the policy's own forward,
        in the same grad mode and autocast as a training step: bit-identical at step 0.
        ``forwards`` > ``len(indices)``: extra forwards on the last bin whose results are dropped
        (FSDP: every rank must take part in every forward's all-gathers)."""
        global REF_FORWARD_CALLS
        wrapper = model if model is not None else self.accelerator.unwrap_model(self.model)
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        total = max(len(indices), forwards or 0)
        self.progress.start("reference", total=total, description="reference log-probs")
        pad = (indices or self._ref_missing)[-1] if total else 0
        for i, _, m in self._forwards(wrapper, indices, total, pad, self._bin, _NOT_INPUTS, progress="reference"):
            out[i] = (m["chosen_logps"].detach().float().cpu(), m["rejected_logps"].detach().float().cpu())
            REF_FORWARD_CALLS += 1
        self.progress.finish("reference")
        if model is not None:
            _reshard(model)
        return out

    def _forwards(self, wrapper, indices: list[int], total: int, pad: int, get_bin, exclude, *, progress=None):
        """Forwards of ``wrapper`` on bins ``indices`` in the mode of a training step (train mode, whose
        dropout is off; grad mode and autocast as in training), so the log-probs are bit-identical to the
        step's; yields ``(index, inputs, metrics)`` for each. ``total`` > ``len(indices)``: extra forwards
        on bin ``pad``, results dropped — under FSDP every rank takes part in every forward's all-gathers.
        ``exclude``: bin keys that are not model inputs; ``progress``: a progress task to advance."""
        was_training = wrapper.training
        wrapper.train()
        try:
            with torch.enable_grad(), self._step_autocast(wrapper):
                for n in range(total):
                    i = indices[n] if n < len(indices) else pad
                    b = {k: v.to(self.args.device) for k, v in get_bin(i).items() if k not in exclude}
                    _, m = wrapper(**_packed(b))
                    m = self._metrics(wrapper, m)
                    if n < len(indices):
                        yield i, b, m
                    del m
                    if progress:
                        self.progress.advance(progress, 1)
        finally:
            wrapper.train(was_training)

    def _metrics(self, wrapper, returned: dict) -> dict:
        """The metrics of ``wrapper``'s last forward as the loss computed them (fp32), not as returned:
        under FSDP2 with bf16 the returned ones were cast to bf16, so reference log-probs read from them
        differed from the step's own (step-0 rewards ~1e-3 instead of 0) and logged metrics were rounded."""
        kept = getattr(self.accelerator.unwrap_model(wrapper), "last_metrics", None)
        return kept if kept is not None else returned

    def _step_autocast(self, wrapper):
        """The autocast a training step's forward of ``wrapper`` runs under. accelerate wraps a prepared
        model's forward in autocast (native AMP; before preparation the step's autocast is added here);
        under FSDP2 it does not: the MixedPrecisionPolicy casts the parameters and the step runs with no
        autocast, so a sharded model whose forward accelerate has not wrapped gets none here either (an
        extra autocast runs some ops, e.g. CUDA softmax, in fp32 where the step runs them in bf16: the
        reference would no longer be the step's own forward, bit for bit)."""
        import contextlib

        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # pragma: no cover - torch without FSDP2
            FSDPModule = ()  # noqa: N806
        if isinstance(wrapper, FSDPModule) and not hasattr(wrapper, "_original_forward"):
            return contextlib.nullcontext()
        return self.accelerator.autocast()

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``transformers.Trainer.train``; ``resume_from_checkpoint`` defaults to
        ``args.resume_from_checkpoint`` (False: start from step 0 regardless)."""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        resume_from_checkpoint = self._resume_checkpoint(resume_from_checkpoint)
        self.tokens_before = 0
        if resume_from_checkpoint:
            self._check_same_run(resume_from_checkpoint)
            saved = read_run_file(resume_from_checkpoint) or {}
            self.tokens_before = saved.get("tokens_trained")
            if self.tokens_before is None:
                logger.warning(
                    "resume: %s does not record the tokens trained before it; the run's token count is unknown",
                    resume_from_checkpoint,
                )
        self.run_identity()  # before the first step changes the weights (checkpoints store it)
        if resume_from_checkpoint and self._ref_missing and self.is_fsdp_enabled:
            # FSDP loads the checkpoint into the wrapped model before the deferred reference pass
            raise bad_arg(
                "resume",
                str(resume_from_checkpoint),
                f"the reference log-probs of the starting model are not in the cache ({self.ref_info['path']}) and "
                "under FSDP they cannot be recomputed once a checkpoint is loaded; fix: keep the reference cache "
                "of the first run (ref_cache on, same CLTX_CACHE), or start over without --resume",
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop("record_index", None)
        if self.args.method == "clo" and "ref_chosen_logps" not in inputs:
            raise RuntimeError("a micro-batch without reference log-probs reached the loss (needed_bins is wrong)")
        P = _pairs(inputs)
        n_nll = _nll_tokens(inputs)
        if num_items_in_batch is not None and self.model.training:
            world = self.accelerator.num_processes
            tot_nll, tot_pairs = (float(x) for x in num_items_in_batch.tolist())
            nll_w = world * n_nll / tot_nll if tot_nll > 0 else 0.0
            cl_w = world * P / tot_pairs
        else:
            nll_w = cl_w = 1.0
        loss, metrics = model(**_packed(inputs), nll_weight=nll_w, cl_weight=cl_w)
        metrics = self._metrics(model, metrics)
        if self.model.training:
            self._store(metrics, P, n_nll)
            self.tokens_trained += int(inputs["attention_mask"].sum())
        return (loss, metrics) if return_outputs else loss

    def _metric_keys(self) -> tuple[str, ...]:
        """The keys :meth:`_store` fills (a rank with nothing to store sends zeros under them)."""
        per_pair = ("cl", "rewards/accuracies", *_PAIR_METRICS) if self.args.method == "clo" else ("logps/chosen",)
        return ("pairs", "nll_tokens", "nll", *per_pair)

    def _store(self, m: dict, P: int, n_nll: int, sums: dict | None = None) -> None:
        s = self._metric_sums if sums is None else sums
        s["pairs"] += P
        s["nll_tokens"] += n_nll
        s["nll"] += float(m["nll"]) * n_nll
        if self.args.method == "clo":
            s["cl"] += float(m["cl"]) * P
            s["rewards/accuracies"] += float(m["accuracy"]) * P
            for name, key in _PAIR_METRICS.items():
                s[name] += float(m[key].double().sum())
        else:
            s["logps/chosen"] += float(m["chosen_logps"].double().sum())

    def _reduce_metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums of :meth:`_store` (all ranks) → means: ``nll`` per NLL token, the rest per pair."""
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys]).to(self.args.device)
        if self.accelerator.num_processes > 1:
            vec = self.accelerator.reduce(vec, reduction="sum")
        tot = dict(zip(keys, vec.tolist(), strict=True))
        pairs, ntok = max(tot.pop("pairs"), 1.0), tot.pop("nll_tokens")
        return {k: (v / ntok if ntok > 0 else 0.0) if k == "nll" else v / pairs for k, v in tot.items()}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._metric_sums and "loss" in logs:
            logs.update(self._reduce_metrics(self._metric_sums))
            self._metric_sums.clear()
        super().log(logs, *args, **kwargs)

    # ---- held-out evaluation --------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Score the held-out bins (``eval_bins``) with the current weights: ``eval_loss`` (λ·NLL +
        (1 − λ)·CL over all held-out bins, as one batch would; SFT: the NLL) and the training metrics
        under ``eval_`` names (``eval_nll``, ``eval_rewards/accuracies`` …), logged and returned.

        Each rank scores a share of the bins and the sums are reduced; the forward is the training
        forward (grad mode and autocast as in the reference pass, no backward), so before the first
        step every held-out reward is exactly zero. Under FSDP every rank runs the same number of
        (collective) forwards."""
        if eval_dataset is not None:
            raise bad_arg("eval_dataset", type(eval_dataset).__name__, "pass held-out data as eval_bins to CLOTrainer")
        if not self.eval_bins:
            return {}
        if self.args.method == "clo" and "ref_chosen_logps" not in self.eval_bins[0]:
            raise RuntimeError("held-out micro-batches without reference log-probs (the reference pass has not run)")
        # FSDP2 shards the model in place (model_wrapped is model): every rank runs as many forwards (before
        # train() wraps it, the extra forwards are only wasted work)
        fsdp = self.is_fsdp_enabled
        model = self.model_wrapped if fsdp else self.accelerator.unwrap_model(self.model)
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, len(self.eval_bins)
        mine = list(range(rank, n, world))
        forwards = -(-n // world) if fsdp else len(mine)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        pad = (mine or [n - 1])[-1]  # the bin of a rank's extra (FSDP) forwards, results dropped
        for _, b, m in self._forwards(model, mine, forwards, pad, self.eval_bins.__getitem__, ("record_index",)):
            self._store({key: v.detach() for key, v in m.items()}, _pairs(b), _nll_tokens(b), sums)
        if fsdp:
            _reshard(model)
        if not sums:  # a rank with no held-out bin still takes part in the reduction
            for key in self._metric_keys():
                sums[key] = torch.zeros((), dtype=torch.float64)
        means = self._reduce_metrics(sums)
        loss = (
            means["nll"]
            if self.args.method == "sft"
            else self.args.lam * means["nll"] + (1 - self.args.lam) * means["cl"]
        )
        metrics = {f"{metric_key_prefix}_loss": loss, **{f"{metric_key_prefix}_{k}": v for k, v in means.items()}}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- saving / loading ---------------------------------------------------------------------

    def _policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None:
            state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items()}
        self._policy().save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_checkpoint(self, model, trial) -> None:
        """Every checkpoint also gets ``clo_run.json``: the run identity (``--resume`` refuses
        another run) and the whole run's tokens so far (a resumed run's count goes on from it).
        Written first, so no checkpoint has weights without it; every rank takes part in the count."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run = {**self.run_identity(), "tokens_trained": self.run_tokens()}
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RUN_FILE).write_text(json.dumps(run, indent=1), encoding="utf-8")
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        ckpt = Path(resume_from_checkpoint)
        policy = self._policy()
        if hasattr(policy, "peft_config"):
            from peft import set_peft_model_state_dict

            f = ckpt / "adapter_model.safetensors"
            if not f.exists():
                raise bad_arg("resume", str(ckpt), "no adapter_model.safetensors in this checkpoint")
            set_peft_model_state_dict(policy, load_file(str(f)))
            return
        files = sorted(ckpt.glob("model*.safetensors"))
        if not files:
            raise bad_arg("resume", str(ckpt), "no model*.safetensors in this checkpoint")
        lm = causal_lm(policy)
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = lm.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(lm.config, "tie_word_embeddings", False) else set()
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise CltxError(
                f"resume={str(ckpt)!r}: checkpoint does not match the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); fix: resume with the same --model and --train"
            )

    def save_final(self, output_dir: str | os.PathLike) -> Path:
        """Save the trained model (LoRA merged) as safetensors with its tokenizer."""
        out = Path(output_dir)
        if self.is_fsdp_enabled:  # every rank takes part in gathering the full state dict
            state = self.accelerator.get_state_dict(self.model)
            if self.args.should_save:
                self.save_full_state_dict(out, state)
            return out
        if not self.args.should_save:
            return out
        out.mkdir(parents=True, exist_ok=True)
        policy = self._policy()
        if hasattr(policy, "peft_config"):
            policy = policy.merge_and_unload()
            self.accelerator.unwrap_model(self.model).policy = policy
        policy.save_pretrained(out)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        return out

    def save_full_state_dict(self, output_dir: str | os.PathLike, state: dict[str, torch.Tensor]) -> Path:
        """Write the model of a gathered full state dict (keys of the ``CLOModel``: ``policy.`` + the
        policy's keys; FSDP's full state dict) with its tokenizer; a LoRA adapter is merged on a CPU
        copy (the live model is sharded and cannot be merged in place)."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k.removeprefix("policy."): v for k, v in state.items()}
        policy = self._policy()
        if hasattr(policy, "peft_config"):
            merge_lora_state_dict(policy, state).save_pretrained(out)
        else:
            policy.save_pretrained(out, state_dict=state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        return out


class _LogFirstAndLastStep(TrainerCallback):
    """Log step 1 and the last step too, not only every ``logging_steps``: a run shorter than
    ``logging_steps`` would otherwise log no loss at all, and a longer one not its final loss."""

    def on_step_end(self, args, state, control, **kwargs):
        if strategy_name(args.logging_strategy) == "no":
            return
        if state.global_step == 1 or state.global_step >= state.max_steps:
            control.should_log = True


class _ReferenceAtTrainBegin(TrainerCallback):
    """FSDP: the reference pass runs through the wrapped (sharded) model once ``train()`` has
    prepared it, before the first micro-batch is drawn."""

    def __init__(self, trainer: CLOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer._ref_missing:
            self.trainer.finish_reference(self.trainer.model_wrapped)


def _reshard(model: torch.nn.Module) -> None:
    """Free the unsharded parameters an FSDP2 forward without backward leaves behind (units that do
    not reshard after forward, e.g. the root): the optimizer works on the sharded ones."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def step_zero_metrics(trainer: CLOTrainer) -> dict[str, float]:
    """Metrics of the first used bin with the starting model (rewards are exactly zero when the
    reference came from the same forward)."""
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    i = trainer.needed_bins()[0]
    b = {k: v.to(trainer.args.device) for k, v in trainer.train_bins[i].items() if k != "record_index"}
    with torch.enable_grad(), trainer._step_autocast(wrapper):
        _, m = wrapper(**_packed(b))
    m = trainer._metrics(wrapper, m)
    return {k: v.detach().cpu() for k, v in m.items()}


def throughput(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 and math.isfinite(seconds) else 0.0
