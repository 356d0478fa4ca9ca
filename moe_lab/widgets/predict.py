"""Predict: commit to a number before the cell that computes it runs, then see how far off you were.

A guess written down first is what turns watching into thinking ("How to Scale Your Model" and d2l
ask the reader to compute before they reveal). The answer is a number or a callable that computes
it from the real run, so the reveal always shows what the ranks actually did.

Headless (nbval, tests): `Predict(...).reveal(guess)` returns the verdict as a string.
"""
from __future__ import annotations

import html
import math

import ipywidgets as w

from .common import Dashboard


class Predict(Dashboard):
    """question: what to predict; answer: a number or a zero-argument callable returning one;
    unit: printed after numbers; tolerance: relative error still counted as right (0.1 = 10 %);
    why: one line shown with the reveal that explains the answer."""

    def __init__(self, question: str, answer, unit: str | None = None, tolerance: float = 0.1, why: str = ""):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if not (callable(answer) or _is_number(answer)):
            raise ValueError(f"answer={answer!r}: must be a number or a callable that returns one")
        if not _is_number(tolerance) or tolerance < 0:
            raise ValueError(f"tolerance={tolerance!r}: must be a number >= 0 (relative, 0.1 = 10 %)")
        self.question, self.unit, self.tolerance, self.why = question, unit or "", float(tolerance), why
        self._answer = answer
        self.guess = w.FloatText(description="your guess", style={"description_width": "80px"},
                                 layout=w.Layout(width="220px"))
        self.button = w.Button(description="Reveal", icon="eye")
        self.result = w.HTML()
        self.button.on_click(lambda _: self.reveal(self.guess.value))
        self.widget = w.VBox([w.HTML(f"<b>Predict:</b> {html.escape(question)}"),
                              w.HBox([self.guess, w.HTML(html.escape(self.unit)), self.button]), self.result])

    @property
    def answer(self) -> float:
        value = self._answer() if callable(self._answer) else self._answer
        if not _is_number(value):
            raise ValueError(f"the answer of {self.question!r} is {value!r}, not a number")
        return float(value)

    def verdict(self, guess) -> str:
        """'right' / 'close' / 'off' in words: within tolerance, within 3x tolerance, or further."""
        if not _is_number(guess):
            raise ValueError(f"guess={guess!r}: type a number")
        real, guess = self.answer, float(guess)
        err = abs(guess - real) / abs(real) if real else abs(guess)
        word = "right" if err <= self.tolerance else "close" if err <= 3 * self.tolerance else "off"
        unit = f" {self.unit}" if self.unit else ""
        return (f"{word}: you said {_fmt(guess)}{unit}, the ranks measured {_fmt(real)}{unit} "
                f"({100 * err:.0f} % off)" + (f". {self.why}" if self.why else ""))

    def reveal(self, guess) -> str:
        """Show and return the verdict for `guess`."""
        text = self.verdict(guess)
        colour = {"right": "#2ca02c", "close": "#ff7f0e"}.get(text.split(":")[0], "#d62728")
        self.result.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        return text


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"
