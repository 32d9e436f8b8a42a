"""What pruners record from a linear layer's inputs, and a way to stop a forward pass early."""
from __future__ import annotations


class StopForward(Exception):
    """Raised by a hook once the blocks of interest have run: the rest of the model is not needed."""


def raise_stop(*_args, **_kwargs) -> None:
    raise StopForward


class InputStats:
    """Forward hook on an nn.Linear: sum of x_j^2 per input feature (Wanda), and X^T X if asked.

    Sums, not means, over every calibration token: ||X_j||_2 = sqrt(sq), H = X^T X.
    """

    def __init__(self, need_hessian: bool = False):
        self.need_hessian = need_hessian
        self.sq = None
        self.hessian = None

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0].detach().flatten(0, -2).float()
        sq = (x * x).sum(dim=0)
        self.sq = sq if self.sq is None else self.sq + sq
        if self.need_hessian:
            h = x.t() @ x
            self.hessian = h if self.hessian is None else self.hessian + h

    @property
    def norm(self):
        """||X_j||_2 over the tokens seen."""
        return self.sq.sqrt()
