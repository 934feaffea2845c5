"""What a run shows on the terminal: a tqdm progress bar of the training steps, with the
latest loss, accuracy, iterations, methods and validation accuracy, and messages printed
above it."""

from __future__ import annotations

import sys
from typing import Any

from ._plot import method_letters

__all__ = ["ProgressBar"]


class ProgressBar:
    """The bar of run ``name``; with ``verbose`` false it shows and prints nothing."""

    def __init__(self, name: str, verbose: bool):
        self.name = name
        self.verbose = verbose
        self._bar = None

    def say(self, message: str) -> None:
        """Print ``message`` above the bar (or where the bar will be)."""
        if self.verbose:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def open(self, total: int, initial: int) -> None:
        """Show the bar of ``total`` steps from step ``initial`` (a resumed run's)."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=self.name,
            unit="step",
            disable=not self.verbose,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def update(self, record: dict[str, Any], last_val: str | None) -> None:
        """One step done: ``record`` is its ``train`` line of ``metrics.jsonl``,
        ``last_val`` the latest validation accuracy, formatted."""
        self._bar.update(1)
        self._bar.set_postfix(
            loss=f"{record['loss']:.3f}",
            acc=f"{record['accuracy']:.2f}",
            it=f"{record['iterations_mean']:.1f}",
            m=method_letters(record["methods"]),
            val=last_val if last_val is not None else "-",
            refresh=False,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
