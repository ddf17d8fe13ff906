"""Progress reporting without a UI dependency.

``cltx`` never draws anything: long loops report through a :class:`Progress` object that the
caller passes in. The CLI passes one that renders rich progress bars with ETA; library users get
:class:`NullProgress` (silent) unless they pass their own. :func:`trainer_callback` adapts a
:class:`Progress` to the Hugging Face ``Trainer`` (whose own tqdm bars the caller turns off).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

logger = logging.getLogger(__name__)


class Progress:
    """Interface for progress sinks. All methods are optional no-ops in this base class.

    A *task* is a string key; ``start`` may be called again for the same key to reset it.
    """

    def start(self, task: str, total: int | None = None, description: str | None = None) -> None:
        """Begin (or restart) a task with an optional known total."""

    def advance(self, task: str, n: int = 1, **fields: Any) -> None:
        """Mark ``n`` more units of ``task`` done; ``fields`` are shown beside the bar (loss=…)."""

    def finish(self, task: str) -> None:
        """Mark ``task`` finished."""

    def message(self, text: str) -> None:
        """A one-line note for the user (not an error)."""
        logger.info(text)


class NullProgress(Progress):
    """Silent progress sink: the library default."""


def ensure_progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()


class quiet_hf_bars(contextlib.ContextDecorator):
    """Turn transformers' (and the hub client's) own tqdm bars off for a call; restore them after.

    ``from_pretrained`` draws "Loading weights", ``save_pretrained`` "Writing model shards": in a
    library call those are bars on the caller's stderr that cltx did not ask for (and, under the
    CLI, lines interleaved with rich's). Used as a decorator on cltx's public entry points; nesting
    is fine (an inner exit leaves the bars off when they were off on entry).
    """

    def _recreate_cm(self):  # a fresh state per decorated call (recursion, threads)
        return type(self)()

    def __enter__(self):
        try:
            from huggingface_hub.utils import are_progress_bars_disabled
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover - transformers is a dependency
            self._saved = None
            return self
        self._saved = (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        transformers_on, hub_off = self._saved
        if transformers_on:
            hf_logging.enable_progress_bar()  # also turns the hub's bars back on …
            if hub_off:
                disable_progress_bars()  # … unless they were off before
        return False


def trainer_callback(progress: Progress, task: str = "train"):
    """Return a ``transformers.TrainerCallback`` that forwards steps and logs to ``progress``."""
    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                progress.start(task, total=state.max_steps, description=task)
                if state.global_step:
                    progress.advance(task, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                progress.advance(task, 1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                shown = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and k in _SHOWN}
                if shown:
                    progress.advance(task, 0, **shown)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                progress.finish(task)

    return _ProgressCallback()


_SHOWN = {"loss", "nll", "cl", "rewards/margins", "rewards/accuracies", "learning_rate", "eval_loss"}
