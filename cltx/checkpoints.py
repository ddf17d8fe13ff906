"""Finding the Trainer checkpoint a ``--resume`` continues from (``cltx pretrain``, ``cltx clo``)."""

from __future__ import annotations

import os
from pathlib import Path

from cltx.errors import bad_arg
from cltx.progress import Progress


def strategy_name(value) -> str:
    """A ``TrainingArguments`` strategy (``IntervalStrategy`` enum or plain string) as its string: "steps", "no" …"""
    return str(getattr(value, "value", value))


def last_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` folder in ``folder`` (other names ignored); None when there is none or
    ``folder`` does not exist."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if os.path.isdir(folder) else None


def resume_point(args, *, model_out: str | os.PathLike, progress: Progress, who: str) -> str | None:
    """The checkpoint a run with ``--resume`` continues from, in ``args.output_dir`` (``args``: the run's
    ``TrainingArguments``), checked before any model loads.

    With none there: a run that writes checkpoints (``--save-steps``) restarts from step 0 with a message
    (it stopped before its first save); one that writes none is refused — nothing could ever be resumed,
    and training the saved model further is ``--model`` with another ``--out``.
    """
    folder = args.output_dir
    found = last_checkpoint(folder)
    if found is not None:
        return found
    if strategy_name(args.save_strategy) != "no":
        progress.message(f"{who}: --resume given but no checkpoint in {folder} yet; starting from step 0")
        return None
    raise bad_arg(
        "resume",
        True,
        f"there is no checkpoint-N folder in {folder} to continue from, and save_steps=0 (the default) writes "
        "none; fix: pass --save-steps N so that runs write checkpoints, or drop --resume (to train the model "
        f"saved in {Path(model_out)} further, pass it as --model with another --out)",
    )
