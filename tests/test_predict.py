"""Predict: the guess is judged against the value the run computed, when it is revealed."""
import pytest
import torch

from moe_lab.widgets import Predict


def test_a_callable_answer_is_read_at_reveal_time_from_the_run():
    run = {}
    p = Predict("bytes sent?", lambda: run["bytes"], unit="B", tolerance=0.1)
    run["bytes"] = 1000  # the live cell below the Predict runs after it was shown
    assert p.reveal(1050).startswith("right: you said 1,050 B, the answer is 1,000 B (5 % off)")
    run["bytes"] = 2000  # a re-run changes the answer, the verdict follows it
    assert p.reveal(1050).startswith("off:")


def test_verdict_bands_right_close_off():
    p = Predict("q", 100, tolerance=0.1, why="because")
    assert p.verdict(91).startswith("right")
    assert p.verdict(125).startswith("close")
    assert p.verdict(140).startswith("off")
    assert p.verdict(140).endswith("(40 % off). because")


def test_exact_answers_such_as_a_row_index():
    p = Predict("which row?", 968, tolerance=0)
    assert p.verdict(968).startswith("right")
    assert p.verdict(967).startswith("close")
    assert p.verdict(905).startswith("off")


def test_zero_answer_and_tensor_answer():
    assert Predict("dropped?", 0).verdict(0).startswith("right")
    assert Predict("dropped?", 0).verdict(3).startswith("off")
    assert Predict("share?", lambda: torch.tensor(0.875)).verdict(0.8).startswith("right")


def test_reveal_shows_the_verdict_in_the_widget():
    p = Predict("q", 10)
    text = p.reveal(10)
    assert "right" in p.result.value and "#2ca02c" in p.result.value and p.guess.value == 10
    assert "10" in text


def test_reveal_before_the_live_cell_ran_says_what_to_run():
    p = Predict("q", lambda: not_yet_computed)  # noqa: F821 - bound by "the cell below"
    p.guess.value = 3
    p.button.click()
    assert "run the cell below" in p.result.value
    with pytest.raises(NameError):
        p.reveal(3)


def test_static_view_names_the_question():
    bundle = Predict("How many rows?", 3, unit="rows")._repr_mimebundle_()
    assert bundle["text/plain"] == "Predict: How many rows? [rows]"
    assert "application/vnd.jupyter.widget-view+json" in bundle


@pytest.mark.parametrize("kwargs, match", [
    (dict(question="", answer=1), "question"),
    (dict(question="q", answer="12"), "answer"),
    (dict(question="q", answer=float("nan")), "answer"),
    (dict(question="q", answer=1, tolerance=-0.1), "tolerance"),
    (dict(question="q", answer=1, why=3), "why"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Predict(**kwargs)


def test_bad_guess_and_non_numeric_answer_raise_value_error():
    with pytest.raises(ValueError, match="type a number"):
        Predict("q", 1).verdict("ten")
    with pytest.raises(ValueError, match="not a number"):
        Predict("q", lambda: "many").verdict(1)
