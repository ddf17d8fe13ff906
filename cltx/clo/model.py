"""The policy wrapper whose forward returns the CLO loss, and the choice of trainable parameters.

:class:`CLOModel` runs the causal LM's body (decoder stack + final norm) to get the final hidden
states, never the full logits, and hands them with the LM-head weight (and bias) to
:func:`cltx.kernels.clo_loss`. The loss is computed inside ``forward`` on purpose: under FSDP the
LM-head weight is only whole (unsharded) inside the wrapped module's forward, and DDP/FSDP hooks
then see one forward and one backward per micro-batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from cltx.errors import bad_arg

logger = logging.getLogger(__name__)

# q/k/v/o projections of Llama, Qwen, Mistral, Gemma (q_proj …), Phi-3 (qkv_proj), GPT-2 (c_attn,
# attn.c_proj), GPT-NeoX/Falcon (query_key_value, attention.dense), OPT (out_proj).
ATTENTION_MODULES = re.compile(
    r"(^|\.)(q_proj|k_proj|v_proj|o_proj|qkv_proj|query_key_value|c_attn|"
    r"(self_attn|attn|attention|self_attention)\.(c_proj|dense|out_proj))$"
)

TRAIN_MODES = ("attention", "full", "lora")
METHODS = ("clo", "sft")

# Test hook: replaces cltx.kernels.clo_loss when set (never set in production code).
_LOSS_OVERRIDE = None


def _loss_fn():
    if _LOSS_OVERRIDE is not None:
        return _LOSS_OVERRIDE
    from cltx.kernels import clo_loss

    return clo_loss


def causal_lm(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` of a plain or peft-wrapped model."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model


def lm_head_of(model: nn.Module) -> nn.Linear:
    """The LM head, validated: CLO needs the logits to be hidden · Wᵀ (+ b), up to :func:`logit_transform`."""
    lm = causal_lm(model)
    name = getattr(getattr(lm, "config", None), "_name_or_path", type(lm).__name__)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise bad_arg(
            "model",
            name,
            f"{type(lm).__name__} has no linear LM head; fix: pass a causal LM (AutoModelForCausalLM), "
            "not a bare encoder/decoder body",
        )
    return head


def _real_or(value, default: float) -> float:
    """A config value as a float when it is a real number (the kernels' own test), else ``default``."""
    from cltx.kernels.reference_clo import _real

    real = _real(value)
    return default if real is None else real


def logit_transform(model: nn.Module) -> dict[str, float]:
    """The elementwise transform the model applies to hidden · Wᵀ (+ b), as :func:`cltx.kernels.clo_loss`'s
    ``logit_scale`` / ``logit_softcap`` keywords (empty for plain logits), read from the config the way
    transformers' modelling code applies it: Gemma-2 (and any model with ``final_logit_softcapping``) caps
    c·tanh(z/c); Cohere / Aya multiply by ``logit_scale``; Granite divides by ``logits_scaling`` (HyperCLOVA X
    multiplies); Falcon-H1 multiplies by ``lm_head_multiplier``. :func:`check_logits_path` verifies the result
    against the model's own logits, so a model whose code does something else is refused, never trained wrong."""
    cfg = getattr(causal_lm(model), "config", None)
    if cfg is None:
        return {}
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    model_type = str(getattr(cfg, "model_type", "") or "")
    scale = _real_or(getattr(cfg, "logit_scale", None), 1.0)
    scaling = _real_or(getattr(cfg, "logits_scaling", None), 1.0)
    if scaling != 1.0 and scaling != 0.0:
        scale = scale * scaling if model_type.startswith("hyperclovax") else scale / scaling
    scale *= _real_or(getattr(cfg, "lm_head_multiplier", None), 1.0)
    cap = _real_or(getattr(cfg, "final_logit_softcapping", None), 0.0)
    out = {}
    if scale != 1.0:
        out["logit_scale"] = scale
    if cap > 0.0:
        out["logit_softcap"] = cap
    return out


def check_logits_path(model: nn.Module) -> None:
    """Probe once that the model's own logits are body hidden states · Wᵀ (+ b), up to the transform of
    :func:`logit_transform`: a head with anything else in between (BERT-style LM heads, a transform this
    code does not know) would make CLO silently wrong."""
    from cltx.kernels.reference_clo import transform_logits

    lm = causal_lm(model)
    params = list(lm.parameters())
    if not params or any(p.is_meta for p in params):
        return
    head = lm_head_of(model)
    transform = logit_transform(model)
    vocab = head.weight.shape[0]
    ids = torch.tensor([[1 % vocab, 2 % vocab, 3 % vocab, 4 % vocab]], device=params[0].device)
    was = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            full = lm(input_ids=ids, use_cache=False).logits.float()
            hid = body_of(model)(input_ids=ids, use_cache=False)
            hid = hid.last_hidden_state if hasattr(hid, "last_hidden_state") else hid[0]
            mine = nn.functional.linear(hid, head.weight, head.bias).float()
            mine = transform_logits(mine, transform.get("logit_scale", 1.0), transform.get("logit_softcap"))
    finally:
        lm.train(was)
    tol = 1e-3 * max(1.0, float(full.abs().max()))
    if full.shape != mine.shape or float((full - mine).abs().max()) > tol:
        raise bad_arg(
            "model",
            getattr(lm.config, "_name_or_path", type(lm).__name__),
            f"{type(lm).__name__}'s logits are not its final hidden states times the LM-head weight"
            + (f" under the transform its config names ({transform})" if transform else "")
            + "; cltx clo supports decoder LMs with a linear head (Llama, Qwen, Mistral, Gemma, Gemma-2, Cohere, "
            "Granite, SmolLM …)",
        )


def body_of(model: nn.Module) -> nn.Module:
    lm = causal_lm(model)
    prefix = getattr(lm, "base_model_prefix", "model")
    body = getattr(lm, prefix, None)
    if body is None or body is lm:
        raise bad_arg("model", type(lm).__name__, "cannot find the decoder body (base_model_prefix)")
    return body


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: the reference pass and the policy pass must see the same function."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for attr in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    cfg = getattr(causal_lm(model), "config", None)
    for attr in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if isinstance(getattr(cfg, attr, None), float):
            setattr(cfg, attr, 0.0)


def _is_projection(m: nn.Module) -> bool:
    """A linear layer: ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's c_attn / c_proj)."""
    if isinstance(m, nn.Linear):
        return True
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers without Conv1D
        return False
    return isinstance(m, Conv1D)


def _is_attention_block(m: nn.Module) -> bool:
    """An attention module of transformers' modelling code (``LlamaAttention``, ``MptAttention``,
    ``DeepseekV3Attention`` …): its own projections are the attention layers whatever they are called."""
    name = type(m).__name__
    return name.endswith("Attention") or name.endswith("Attn")


def attention_module_names(model: nn.Module) -> list[str]:
    """The attention projections: the q/k/v/o names above, or any linear layer that is a direct child of an
    attention module (MPT's ``Wqkv``/``out_proj``, DeepSeek's MLA ``q_a_proj``/``kv_b_proj`` …)."""
    inside = set()
    for parent_name, parent in model.named_modules():
        if _is_attention_block(parent):
            for child_name, child in parent.named_children():
                if _is_projection(child):
                    inside.add(f"{parent_name}.{child_name}" if parent_name else child_name)
    return [n for n, m in model.named_modules() if _is_projection(m) and (n in inside or ATTENTION_MODULES.search(n))]


def set_trainable(model: nn.Module, mode: str, *, lora_r: int = 16, lora_alpha: int = 32) -> nn.Module:
    """Freeze/unfreeze by ``mode`` (attention | full | lora); returns the (possibly peft-wrapped) model."""
    if mode not in TRAIN_MODES:
        raise bad_arg("train", mode, f"choose one of {', '.join(TRAIN_MODES)}")
    names = attention_module_names(model)
    if mode in ("attention", "lora") and not names:
        raise bad_arg("train", mode, f"no q/k/v/o projection found in {type(model).__name__}; fix: use --train full")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if mode == "attention":
        keep = set(names)
        for n, p in model.named_parameters():
            p.requires_grad_(n.rsplit(".", 1)[0] in keep)
        return model
    from peft import LoraConfig, get_peft_model

    # Full module names: a bare suffix would also catch MLP layers of the same name (GPT-2's mlp.c_proj).
    cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=list(names), bias="none")
    return get_peft_model(model, cfg)


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of the starting weights for the reference-log-prob cache key: the config and
    every tensor's name, shape, dtype and a strided sample of up to 16,384 of its values (no
    full-size copies: an 8B model fingerprints in seconds without extra device memory). The folder
    the model was loaded from (the config's ``_name_or_path``) is not part of it: the same weights
    under another path are the same model."""
    h = hashlib.sha256()
    cfg = getattr(causal_lm(model), "config", None)
    if cfg is not None:
        fields = json.loads(cfg.to_json_string(use_diff=False))
        fields.pop("_name_or_path", None)
        h.update(json.dumps(fields, sort_keys=True).encode())
    with torch.no_grad():
        for name, p in causal_lm(model).state_dict().items():
            if "lora_" in name:  # a fresh adapter adds exactly zero: not part of the starting function
                continue
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            step = max(1, flat.numel() // 16384)
            sample = torch.cat([flat[::step], flat[-1:]]).to(torch.float64).cpu()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


# The files transformers loads a model's weights from (single, sharded, index, PEFT adapter).
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
_FILE_HEAD_BYTES = 1 << 16
_FILE_SAMPLES, _FILE_SAMPLE_BYTES = 64, 4096


def _local_model_dir(name_or_path: str | os.PathLike | None) -> Path | None:
    """The folder a model is loaded from: a local folder, or a hub id's snapshot in the local hub
    cache (never a download). None when neither exists."""
    if not name_or_path:
        return None
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # not a hub id, or not in the cache: no fingerprint
        return None


def model_files_fingerprint(name_or_path: str | os.PathLike | None) -> str | None:
    """A cheap identity of a saved model, read from its files without loading it: ``config.json``
    (and ``adapter_config.json``) and, for every weight file, its name, size, first 64 KiB (a
    safetensors header: every tensor's name, dtype, shape and offset) and 64 evenly spaced 4 KiB
    samples (about 320 KiB read per file, whatever the model's size). ``--resume`` compares it with
    the checkpoint's before the model loads.

    Returns:
        A hex digest, or None when ``name_or_path`` is not a local folder or cached hub model with
        weight files (e.g. a model built in memory).
    """
    folder = _local_model_dir(name_or_path)
    if folder is None:
        return None
    weights = sorted(f for f in folder.iterdir() if f.is_file() and _WEIGHT_FILE.match(f.name))
    if not weights:
        return None
    h = hashlib.sha256()
    for name in ("config.json", "adapter_config.json"):
        if (folder / name).is_file():
            h.update(name.encode() + (folder / name).read_bytes())
    for f in weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(_FILE_HEAD_BYTES))
            if size > _FILE_HEAD_BYTES:
                for k in range(_FILE_SAMPLES):
                    fh.seek(_FILE_HEAD_BYTES + (size - _FILE_HEAD_BYTES) * k // _FILE_SAMPLES)
                    h.update(fh.read(_FILE_SAMPLE_BYTES))
    return h.hexdigest()


def merge_lora_state_dict(peft_model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain ``*ForCausalLM`` with the LoRA adapter merged, built from a full state dict of
    ``peft_model`` (its own keys, e.g. FSDP's gathered one): the architecture is instantiated on the
    meta device and takes the state dict's CPU tensors, so no second copy is allocated."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    lm = causal_lm(peft_model)
    adapter = getattr(peft_model, "active_adapter", "default")
    with torch.device("meta"):
        copy = get_peft_model(AutoModelForCausalLM.from_config(lm.config), peft_model.peft_config[adapter])
    _, unexpected = copy.load_state_dict(state, strict=False, assign=True)
    base = copy.get_base_model()
    if getattr(base.config, "tie_word_embeddings", False):
        base.tie_weights()  # assign=True replaced the embedding; the head must follow it
    left = [n for n, p in copy.named_parameters() if p.is_meta]
    if left or unexpected:
        raise RuntimeError(f"state dict does not match the LoRA model: missing {left[:3]}, unexpected {unexpected[:3]}")
    merged = copy.merge_and_unload()
    merged.generation_config = lm.generation_config
    return merged


def pack_reference(logps: torch.Tensor) -> torch.Tensor:
    """fp32 reference log-probs as their int32 bit pattern (no copy). FSDP2's MixedPrecisionPolicy
    casts every floating input of a sharded module to its param_dtype (bf16 under --bf16): -11.6045
    went in as -11.625, and the step-0 rewards came out ~1e-3 instead of exactly 0. Integers pass."""
    return logps.to(torch.float32).contiguous().view(torch.int32)


def unpack_reference(ref: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_reference`; floating tensors are returned as they are."""
    return ref.view(torch.float32) if ref.dtype == torch.int32 else ref


class CLOModel(nn.Module):
    """Policy + fused loss in one forward.

    Args:
        policy: a ``*ForCausalLM`` (or a peft model around one).
        method: ``clo`` (NLL + contrastive term) or ``sft`` (NLL of every row).
        beta, lam, average_logps, memory_budget_gib: passed to :func:`cltx.kernels.clo_loss`.
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        method: str = "clo",
        beta: float = 0.1,
        lam: float = 0.5,
        average_logps: bool = False,
        memory_budget_gib: float | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise bad_arg("method", method, f"choose one of {', '.join(METHODS)}")
        self.policy = policy
        self.method = method
        self.beta = beta
        self.lam = lam
        self.average_logps = average_logps
        self.memory_budget_gib = memory_budget_gib
        check_logits_path(policy)  # validate early: a clear error instead of a silently wrong loss
        self.logit_transform = logit_transform(policy)  # {} for plain logits (most models)
        self.config = causal_lm(policy).config
        # FSDP's transformer-based auto-wrap reads this: decoder layers become their own units and
        # the embeddings / LM head stay in the root unit, whole inside this forward. On purpose this
        # wrapper has no get_input_embeddings / get_output_embeddings / base_model_prefix: accelerate's
        # FSDP2 preparation would give the LM head a unit of its own, whose weight stays sharded here
        # (the head module's forward is never called; the loss reads its weight).
        self._no_split_modules = getattr(causal_lm(policy), "_no_split_modules", None)

    # The Trainer enables activation checkpointing through one of these names (transformers ≥ 5.x:
    # activation_checkpointing_enable). Non-reentrant, so frozen embeddings still let gradients
    # reach the trained attention layers.
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        lm = causal_lm(self.policy)
        kw = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kw, **kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states (rows, T, H) of the body: no logits are formed."""
        out = body_of(self.policy)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        nll_mask: torch.Tensor,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        nll_weight: float = 1.0,
        cl_weight: float = 1.0,
        **unused,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch.

        Args:
            input_ids, attention_mask, labels: (R, T) int64; R = 2P rows for ``clo`` (chosen rows
                then rejected rows), P rows for ``sft``; labels aligned, -100 not scored.
            nll_mask: (P,) bool, which chosen rows count in the NLL term.
            ref_chosen_logps, ref_rejected_logps: (P,) float; zeros when absent (reference pass, SFT).
                int32 is read as the bit pattern of fp32 values (:func:`pack_reference`): how the
                trainer passes them, so FSDP2's input cast (bf16 under --bf16) cannot round them.
            nll_weight, cl_weight: multipliers of the NLL and CL terms (the trainer uses them to
                normalise over the whole accumulated, all-rank batch).

        Returns:
            ``(loss, metrics)``: loss = lam·nll_weight·NLL + (1 − lam)·cl_weight·CL (``sft``:
            nll_weight·NLL) and the kernel's metrics dict.
        """
        hidden = self.hidden_states(input_ids, attention_mask)
        head = lm_head_of(self.policy)
        if self.method == "sft":
            # The kernel pairs rows; SFT rows go in as chosen rows against all-masked rejected rows.
            hidden = torch.cat([hidden, hidden], dim=0)
            labels = torch.cat([labels, torch.full_like(labels, -100)], dim=0)
            lam, cl_weight = 1.0, 0.0
        else:
            lam = self.lam
        P = hidden.shape[0] // 2
        zeros = hidden.new_zeros(P, dtype=torch.float32)
        ref_c = zeros if ref_chosen_logps is None else unpack_reference(ref_chosen_logps)
        ref_r = zeros if ref_rejected_logps is None else unpack_reference(ref_rejected_logps)
        # One kernel call for the weighted sum: lam'·NLL + (1 − lam')·CL, times c.
        a, b = lam * float(nll_weight), (1.0 - lam) * float(cl_weight)
        c = a + b
        lam_eff = a / c if c > 0 else lam
        loss, metrics = _loss_fn()(
            hidden,
            head.weight,
            labels,
            ref_c,
            ref_r,
            nll_mask,
            bias=head.bias,
            beta=self.beta,
            lam=lam_eff,
            average_logps=self.average_logps,
            memory_budget_gib=self.memory_budget_gib,
            **self.logit_transform,
        )
        if c != 1.0:
            loss = loss * c
        # The metrics as computed (fp32), kept beside the return value: FSDP2's MixedPrecisionPolicy
        # casts a sharded module's outputs to its output_dtype (bf16 under --bf16), which rounded the
        # reference log-probs (-11.6 to -11.625) and every logged reward (see CLOTrainer._metrics).
        self.last_metrics = {k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()}
        return loss, metrics
