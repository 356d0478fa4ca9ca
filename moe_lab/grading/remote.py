"""The student's names, as the grader's checks see them: proxies whose calls run in the kernel.

A check written for nbgrader calls `top_k_gating(logits, k=2)` and compares what comes back. Here
`top_k_gating` is a `Remote`: calling it sends the arguments to the sandboxed kernel as plain data
(moe_lab/grading/wire.py), the student's function runs there, and only plain data comes back.
When an input requires grad, the outputs are joined to the grader's autograd graph through
`_join_grad`, so a check can back-propagate through the student's function (the kernel keeps the
call's graph and answers a vector-Jacobian product request).
"""
from __future__ import annotations


class AnswerFailed(Exception):
    """The student's code raised, returned something that is not data, or ran out of time."""


class KernelGone(Exception):
    """The kernel died or stopped answering: nothing more can be asked of it."""


class Remote:
    """A name in the kernel. Attributes chain; a call runs there on plain data and returns plain data."""

    __slots__ = ("_judge", "_name", "_attr")

    def __init__(self, judge, name: str, attr: tuple = ()):
        self._judge, self._name, self._attr = judge, name, attr

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Remote(self._judge, self._name, self._attr + (attr,))

    def __call__(self, *args, **kwargs):
        return self._judge.call(self, args, kwargs)

    def __repr__(self):
        return f"<the submission's {'.'.join((self._name, *self._attr))}>"

    def _ref(self) -> dict:
        return {"remote": self._name, "attr": list(self._attr)}

    def _label(self) -> str:
        return ".".join((self._name, *self._attr))


def _replace(x, swap: dict):
    if id(x) in swap:
        return swap[id(x)]
    if isinstance(x, list):
        return [_replace(v, swap) for v in x]
    if isinstance(x, tuple):
        return tuple(_replace(v, swap) for v in x)
    if isinstance(x, dict):
        return {k: _replace(v, swap) for k, v in x.items()}
    return x


def _join_grad(judge, call_id: int, inputs: list, outputs: list, grad_out: list[int]):
    """The outputs of a kernel call, joined to the grader's autograd graph: backward asks the kernel
    for the input gradients (a vjp on the graph it kept), so checks can back-propagate through it."""
    import torch

    class RemoteGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *tensors):
            return tuple(t.detach().clone() for t in tensors[len(inputs):])

        @staticmethod
        def backward(ctx, *grads):
            by_index = {i: g for i, g in zip(grad_out, grads) if g is not None}
            got = judge.vjp(call_id, len(outputs), by_index)
            if not isinstance(got, list) or len(got) != len(inputs):
                raise AnswerFailed("backward through the answer did not return one gradient per input")
            grads_in = [g if isinstance(g, torch.Tensor) and t.requires_grad and g.shape == t.shape else None
                        for g, t in zip(got, inputs)]
            return (*grads_in, *[None] * len(grads))

    return RemoteGrad.apply(*inputs, *[outputs[i] for i in grad_out])


