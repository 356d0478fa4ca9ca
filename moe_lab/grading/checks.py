"""Checks that teach: what the visible checks of an exercise use to say expected / got / a hint.

A failing check should tell a student what to change, not show torch's internals: a detached
tensor, a wrong shape or dtype each get their own sentence. A passing check says so ("✓ ... (2
points)"), so success is not just the absence of red. Nothing here knows an answer.

    expect_tensor(gates, "gates", shape=(2, 2), dtype=torch.float32, grad=True)
    expect_equal(experts.tolist(), [[1, 2], [3, 0]], "experts", hint="ties go to the lower index")
    passed("the chosen experts", 2)

`check_exercise()` (moe_lab/grading/selfcheck.py) runs a notebook's visible checks and counts
their points the way the grader does.
"""
from __future__ import annotations


def _fmt(x) -> str:
    text = repr(x.tolist()) if hasattr(x, "tolist") and not isinstance(x, (int, float)) else repr(x)
    return text if len(text) <= 300 else text[:300] + " ..."


def _fail(what: str, expected, got, hint: str = "") -> None:
    message = f"{what}: expected {expected}, got {got}"
    raise AssertionError(message + (f". Hint: {hint}" if hint else ""))


def expect_tensor(x, name: str, shape=None, dtype=None, grad: bool | None = None) -> None:
    """The common mistakes first, each with its own message: not a tensor, shape, dtype, detached."""
    import torch

    if not isinstance(x, torch.Tensor):
        _fail(name, "a torch.Tensor", f"a {type(x).__name__}", "return tensors, not lists or numbers")
    if shape is not None and tuple(x.shape) != tuple(shape):
        _fail(f"{name}.shape", tuple(shape), tuple(x.shape), "check which dimension you reduced or indexed")
    if dtype is not None and x.dtype != dtype:
        hint = ("indices are torch.long: keep the indices torch gives you, or call .long()"
                if dtype == torch.long else f"convert with .to({dtype})")
        _fail(f"{name}.dtype", dtype, x.dtype, hint)
    if grad and not x.requires_grad:
        _fail(name, "a tensor connected to the autograd graph (requires_grad=True)", "a detached tensor",
              "do not call .detach(), .item(), .tolist() or torch.tensor(...) on what you return: "
              "the router learns through this value")


def expect_equal(got, expected, what: str, hint: str = "") -> None:
    """Equal values (tensors compared exactly, with a shape check first)."""
    import torch

    if isinstance(expected, torch.Tensor):
        expect_tensor(got, what, shape=expected.shape)
        ok = torch.equal(got.to(expected.dtype), expected)
    else:
        ok = got == expected
    if not ok:
        _fail(what, _fmt(expected), _fmt(got), hint)


def expect_close(got, expected, what: str, atol: float = 1e-6, hint: str = "") -> None:
    """Close values: tensors of the same shape within `atol`, or numbers."""
    import torch

    if isinstance(got, torch.Tensor) or isinstance(expected, torch.Tensor):
        expected = torch.as_tensor(expected, dtype=torch.float32)
        expect_tensor(got, what, shape=expected.shape)
        ok = torch.allclose(got.detach().float(), expected, atol=atol)
        if not ok:
            worst = (got.detach().float() - expected).abs().max().item()
            _fail(what, _fmt(expected), f"{_fmt(got.detach())} (largest difference {worst:.3g})", hint)
    elif abs(float(got) - float(expected)) > atol:
        _fail(what, expected, got, hint)


def passed(what: str, points) -> None:
    """The line a check prints when it passes."""
    n = f"{points:g}" if isinstance(points, float) else str(points)
    print(f"✓ {what} ({n} point{'' if points == 1 else 's'})")
