"""Predict: commit to a number before the cell that computes it runs, then see how far off you were.

A guess written down first is what turns watching into thinking ("How to Scale Your Model" and d2l
ask the reader to compute before they reveal). The answer is a number or a callable that computes
it from the real run, so the reveal always shows what the ranks (or the cost model) actually gave.

In a chapter a Predict cell sits *before* the live cell whose result it asks about; its answer is a
`lambda` that reads a name that cell computes, so pressing Reveal before running it says so instead
of giving the answer away. Headless (nbval, tests): `Predict(...).reveal(guess)` returns the verdict.
"""
from __future__ import annotations

import html
import math

import ipywidgets as w

from .common import Dashboard

_COLOURS = {"right": "#2ca02c", "close": "#ff7f0e", "off": "#d62728"}


class Predict(Dashboard):
    """question: what to predict; answer: a number or a zero-argument callable returning one;
    unit: printed after numbers; tolerance: relative error still counted as right (0.1 = 10 %;
    0 for an exact answer such as a row index); why: one line shown with the reveal."""

    def __init__(self, question: str, answer, unit: str | None = None, tolerance: float = 0.1, why: str = ""):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if not (callable(answer) or _is_number(answer)):
            raise ValueError(f"answer={answer!r}: must be a number or a callable that returns one")
        if not _is_number(tolerance) or tolerance < 0:
            raise ValueError(f"tolerance={tolerance!r}: must be a number >= 0 (relative, 0.1 = 10 %)")
        if not isinstance(why, str):
            raise ValueError(f"why={why!r}: must be a string (one line on why the answer is what it is)")
        self.question, self.unit, self.tolerance, self.why = question, unit or "", float(tolerance), why
        self._answer = answer
        self.guess = w.FloatText(description="your guess", style={"description_width": "80px"},
                                 layout=w.Layout(width="220px"))
        self.button = w.Button(description="Reveal", icon="eye")
        self.result = w.HTML()
        self.button.on_click(lambda _: self._clicked())
        self.widget = w.VBox([w.HTML(f"<b>Predict:</b> {html.escape(question)}"),
                              w.HBox([self.guess, w.HTML(html.escape(self.unit)), self.button]), self.result])

    @property
    def answer(self) -> float:
        value = self._answer() if callable(self._answer) else self._answer
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a 0-dim tensor or numpy scalar
            value = value.item()
        if not _is_number(value):
            raise ValueError(f"the answer of {self.question!r} is {value!r}, not a number")
        return float(value)

    def verdict(self, guess) -> str:
        """'right' / 'close' / 'off': within tolerance, within 3x tolerance (at least one unit for
        exact answers), or further; then the real value, the error, and why."""
        if not _is_number(guess):
            raise ValueError(f"guess={guess!r}: type a number")
        real, guess = self.answer, float(guess)
        err = abs(guess - real) / abs(real) if real else abs(guess)
        if err <= self.tolerance:
            word = "right"
        elif err <= 3 * self.tolerance or (self.tolerance == 0 and abs(guess - real) <= 1):
            word = "close"
        else:
            word = "off"
        unit = f" {self.unit}" if self.unit else ""
        return (f"{word}: you said {_fmt(guess)}{unit}, the answer is {_fmt(real)}{unit} "
                f"({100 * err:.0f} % off)" + (f". {self.why}" if self.why else ""))

    def reveal(self, guess) -> str:
        """Show and return the verdict for `guess`."""
        text = self.verdict(guess)
        self.guess.value = float(guess)
        colour = _COLOURS[text.split(":")[0]]
        self.result.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        return text

    def _clicked(self) -> None:
        """The button: reveal, or say what to run first when the answer's cell has not run yet."""
        try:
            self.reveal(self.guess.value)
        except NameError as e:
            self.result.value = (f"<i>Nothing to reveal yet ({html.escape(str(e))}): run the cell below "
                                 "this one, then press Reveal.</i>")

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"Predict: {self.question}" + (f" [{self.unit}]" if self.unit else "")
        return bundle


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.3g}"

