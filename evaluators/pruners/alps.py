"""ALPS one-shot pruning of one linear layer (Meng, Behdin, Wang & Mazumder, NeurIPS 2024).

ALPS minimises the layer's reconstruction error ||X W^T - X W'^T||_F^2 under an l0 (or N:M)
constraint on W' in two stages:

1. ADMM on the split  min_B f(B) + indicator(D sparse)  s.t. B = D, with the paper's rho-update
   scheme (rho grows while the support still moves, shrinks while it is frozen too early). Its
   only job is to find a good support.
2. Preconditioned conjugate gradient (PCG) on that fixed support, warm-started at the ADMM
   iterate, to refit the kept weights.

Where this follows the official code (github.com/mazumder-lab/ALPS, ``alps.py``, commit 8af9e6b):

- Ridge damping of 1 % of the mean Hessian diagonal, then the Hessian is rescaled to a unit
  diagonal and the weights are multiplied by the same column scales (alps.py:86-103). The target
  stays the dense weight under the damped Hessian, i.e. the objective is
  ||X(W - W')||^2 + lambda ||W - W'||^2.
- Support selection is on the squared *scaled* weights (|W_ij| * sqrt(H_jj + lambda)), and for
  unstructured sparsity it is a top-k over the WHOLE layer (alps.py:125-131, 155-159), not per
  row: rows can end up with different sparsities. N:M keeps the N largest of every M consecutive
  inputs of a row (alps.py:134-144).
- ADMM iteration, rho schedule, stopping rules and constants: see the constants below, each with
  its source line. The final support is the projection of the last B iterate (alps.py:227-236).
- PCG: 10 iterations warm-started at the ADMM solution, residual masked to the support
  (alps.py:251-252, 280-396). The official call passes no preconditioner: since the Hessian has
  been rescaled to a unit diagonal, the diagonal (Jacobi) preconditioner of the paper *is* that
  rescaling, and PCG in the scaled coordinates is plain CG.

Where it differs:

- The number of zeros is exactly round(ratio * out * in) for the layer (the official code keeps
  round((1 - ratio) * n) weights, which can differ by one at a half-way tie), and the support is
  an explicit boolean mask instead of "entries that are exactly 0".
- The official support-change count (alps.py:173-174) compares zero patterns; we compare masks,
  which only differs if a kept weight is exactly 0.0.
- PCG stops early once every row's residual on its support is below rtol times the norm of that
  row's right-hand side. The official test uses the unmasked residual ||H X - Y|| (alps.py:369),
  which does not vanish off the support, so it in effect always runs all 10 iterations; ours
  also nearly always does, but can stop when the support problem is solved.
- The reconstruction-error printouts of the official loop (alps.py:203-219) are dropped: they
  do not influence the result.
- With ``nm`` the ratio argument is ignored (the sparsity is 1 - N/M), as elsewhere in this repo.
- Layout: we work with the (out x in) weight directly instead of its transpose; every row is an
  independent least-squares problem sharing the same Hessian, so this changes nothing.

Checked against the official ALPS_admm run on CPU (SmolLM2-135M block 3 q/k_proj, 60 %, 70 %,
2:4): the same rho trajectory and iteration count, and relative errors within 2e-5 of theirs.
The supports agree on 99-99.9 % of the entries. That is as close as two official runs get when
W is perturbed by 1e-7 (99.3 %): the thresholding makes the ADMM iterates sensitive to rounding.
"""
from __future__ import annotations

import torch

from ..capture import InputStats
from .base import NM, Pruner

# --- ALPS constants, with their source in the official code (mazumder-lab/ALPS, alps.py) ------
ALPS_DAMPING = 0.01           # ridge: fraction of mean(diag(H)) added to the diagonal (l. 86)
ALPS_RHO_INIT = 0.1           # initial ADMM penalty: opt.py:124 and llama.py:121 pass rho=0.1
                              # (their --rho flags, 0.1 / 300, are never read)
ALPS_MAX_ITER = 300           # ADMM iteration cap (l. 72, max_iter)
ALPS_UPDATE_EVERY = 3         # rho is revisited every 3 ADMM iterations (l. 72, update_iter)
ALPS_MIN_ITER = 30            # "support settled" stop only after 30 iterations (l. 72, switch_iter)
ALPS_STOP_CHANGE = 3e-4       # ... when < 0.03 % of the kept entries changed (l. 224)
ALPS_RHO_FAST = (0.1, 1.3)    # > 10 % of the kept entries changed -> rho *= 1.3 (l. 177-179)
ALPS_RHO_MID = (0.005, 1.2)   # > 0.5 % changed -> rho *= 1.2 (l. 180-182)
ALPS_RHO_SLOW = 1.1           # a few changes (>= 1) after rho started growing (l. 183-185)
ALPS_RHO_SHRINK = 5.0         # support frozen before rho ever grew -> rho /= 5 (l. 186-195)
ALPS_RHO_MAX = 1e6            # rho cap (l. 198-199)
ALPS_PCG_ITERS = 10           # PCG iterations on the final support (l. 252, maxiter)
ALPS_PCG_RTOL = 1e-4          # PCG relative tolerance (l. 252, rtol)
ALPS_SCALE_EPS = 1e-8         # added to sqrt(diag(H)) before dividing by it (l. 91)

DEFAULT_OPTIONS = {
    "damping": ALPS_DAMPING,
    "rho": ALPS_RHO_INIT,
    "max_iter": ALPS_MAX_ITER,
    "update_every": ALPS_UPDATE_EVERY,
    "min_iter": ALPS_MIN_ITER,
    "stop_change": ALPS_STOP_CHANGE,
    "pcg_iters": ALPS_PCG_ITERS,
    "pcg_rtol": ALPS_PCG_RTOL,
}


def _keep_mask(z: torch.Tensor, keep: int, nm: NM) -> torch.Tensor:
    """Projection onto the constraint set, as a mask: the largest |z| (layer-wide or N of every M)."""
    mag = z * z
    if nm is not None:
        n, m = nm
        groups = mag.view(z.shape[0], -1, m)
        top = groups.topk(n, dim=-1).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True).view_as(z)
    mask = torch.zeros(z.numel(), dtype=torch.bool, device=z.device)
    mask[mag.view(-1).topk(keep, sorted=False).indices] = True
    return mask.view_as(z)


def _ridge_inverse(eigvals: torch.Tensor, eigvecs: torch.Tensor, rho: float) -> torch.Tensor:
    """(H + rho I)^-1 from the eigendecomposition of H, so that changing rho costs one product."""
    return ((eigvecs / (eigvals + rho)) @ eigvecs.T).float()


def _support_cg(hess: torch.Tensor, rhs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                iters: int, rtol: float) -> torch.Tensor:
    """CG for every row at once on  x_S H_SS = rhs_S  (x zero off its support S).

    Keeping residual and search directions masked makes CG run on the principal submatrix H_SS
    without ever forming it; H has unit diagonal, so this is Jacobi-preconditioned CG.
    """
    maskf = mask.to(x.dtype)
    r = (rhs - x @ hess) * maskf
    p = r.clone()
    rr = (r * r).sum(dim=1)
    target = rtol * (rhs * maskf).norm(dim=1)
    for _ in range(iters):
        hp = p @ hess
        curv = (p * hp).sum(dim=1)
        # Rows already solved have p = 0: give them a zero step instead of 0/0.
        alpha = torch.where(curv > 0, rr / curv.clamp_min(1e-30), torch.zeros_like(rr))
        x = x + alpha[:, None] * p
        r = (r - alpha[:, None] * hp) * maskf
        rr_new = (r * r).sum(dim=1)
        if bool((rr_new.sqrt() <= target).all()):
            break
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
        p = r + beta[:, None] * p
        rr = rr_new
    return x


@torch.no_grad()
def alps_prune(weight: torch.Tensor, hessian: torch.Tensor, ratio: float, nm: NM = None,
               **options) -> torch.Tensor:
    """Prune an nn.Linear weight (out x in) with ALPS; returns a new tensor, `weight` is untouched.

    hessian: X^T X over the calibration tokens (in x in); its scale does not matter.
    ratio: fraction of the LAYER's weights set to zero: exactly round(ratio * out * in) zeros,
        chosen layer-wide (rows get different counts), as in the official code.
    nm: (N, M) keeps N of every M consecutive inputs of each row; `ratio` is then ignored.
    options: override DEFAULT_OPTIONS (damping, rho, max_iter, update_every, min_iter,
        stop_change, pcg_iters, pcg_rtol).
    """
    opt = _options(options)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match {cols} inputs")
    total = rows * cols
    keep = _kept_count(rows, cols, ratio, nm)
    if keep == total:
        return weight.detach().clone()
    if keep == 0:
        return torch.zeros_like(weight)
    H, scale, B0, rhs = _scaled_problem(weight, hessian, opt["damping"])
    B = _admm(H, B0, rhs, keep, nm, opt)
    # Final support: projection of the last B iterate; then refit the kept weights with CG.
    mask = _keep_mask(B, keep, nm)
    B = _support_cg(H, rhs, B * mask, mask, int(opt["pcg_iters"]), float(opt["pcg_rtol"]))
    out = (B * mask) / scale[None, :]
    return out.to(weight.dtype)


def _options(options: dict) -> dict:
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown ALPS options: {sorted(unknown)}")
    return {**DEFAULT_OPTIONS, **options}


def _kept_count(rows: int, cols: int, ratio: float, nm: NM) -> int:
    """How many weights of the layer stay: N/M of them, or all but round(ratio * rows * cols)."""
    total = rows * cols
    if nm is not None:
        n, m = nm
        if not 0 < n <= m or cols % m:
            raise ValueError(f"bad N:M pattern {nm} for {cols} inputs")
        return total // m * n
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return total - round(ratio * total)


def _scaled_problem(weight: torch.Tensor, hessian: torch.Tensor, damping: float):
    """(H, scale, B0, rhs): the damped Hessian rescaled to unit diagonal, the column scales, the
    scaled dense weights (the reconstruction target) and the gradient term B0 H.

    Ridge damping, then the rescaling (and W by the inverse scales) - this is the diagonal
    preconditioning that makes one rho fit every layer and plain CG converge fast.
    """
    W = weight.detach().float()
    H = hessian.detach().to(W.device, torch.float32).clone()
    damp = damping * H.diagonal().mean().item()
    H.diagonal().add_(damp if damp > 0 else 1.0)  # an all-zero H degrades to magnitude pruning
    scale = H.diagonal().sqrt() + ALPS_SCALE_EPS
    H = H / scale[:, None] / scale[None, :]
    B0 = W * scale[None, :]          # scaled dense weights: the reconstruction target
    rhs = B0 @ H                     # gradient term: f(B) = 1/2 tr(B H B^T) - tr(B rhs^T)
    return H, scale, B0, rhs


def _admm(H: torch.Tensor, B0: torch.Tensor, rhs: torch.Tensor, keep: int, nm: NM, opt: dict) -> torch.Tensor:
    """ADMM with the paper's rho schedule; returns the last B iterate (its projection is the support)."""
    # One eigendecomposition (in float64, as the official code) serves every rho.
    eigvals, eigvecs = torch.linalg.eigh(H.double())
    rho = float(opt["rho"])
    inv = _ridge_inverse(eigvals, eigvecs, rho)
    mask = _keep_mask(B0, keep, nm)
    D_init = B0 * mask
    D, V, B = D_init.clone(), torch.zeros_like(B0), B0
    prev_mask = mask
    rho_grew = False
    for it in range(int(opt["max_iter"])):
        B = (rhs - V + rho * D) @ inv          # exact minimiser of the augmented Lagrangian in B
        Z = B + V / rho
        mask = _keep_mask(Z, keep, nm)         # D-step: projection onto the sparsity set
        D = Z * mask
        V = V + rho * (B - D)                  # dual ascent
        if (it + 1) % int(opt["update_every"]):
            continue
        change = int((mask != prev_mask).sum())
        frac = change / keep
        rho, rho_grew, step = _next_rho(rho, change, frac, rho_grew)
        if step == "converged":
            break
        if step == "restart":
            B, D, V = B0, D_init.clone(), torch.zeros_like(B0)
        prev_mask = mask
        rho = min(rho, ALPS_RHO_MAX)
        inv = _ridge_inverse(eigvals, eigvecs, rho)
        if it >= int(opt["min_iter"]) and frac < opt["stop_change"]:
            break
    return B


def _next_rho(rho: float, change: int, frac: float, rho_grew: bool) -> tuple[float, bool, str]:
    """The rho schedule, from how many kept entries changed since the last visit (`frac` of them).

    Returns (rho, rho_grew, step); step "restart": rho started too large, so ADMM restarts from
    the initial projection with the smaller rho; "converged": stop; "go": carry on.
    """
    if frac > ALPS_RHO_FAST[0]:
        return rho * ALPS_RHO_FAST[1], True, "go"   # support still moving a lot: pull B and D together
    if frac > ALPS_RHO_MID[0]:
        return rho * ALPS_RHO_MID[1], True, "go"
    if change > 0 and rho_grew:
        return rho * ALPS_RHO_SLOW, True, "go"      # nearly settled: keep tightening, slowly
    if change > 0:
        # A trickle of changes before rho ever grew: rho started too large and froze the support.
        return rho / ALPS_RHO_SHRINK, False, "restart"
    if rho_grew:
        return rho, True, "converged"               # support unchanged after rho grew
    return rho / ALPS_RHO_SHRINK, False, "go"       # frozen from the start: explore with a smaller rho


def prune_layer(weight: torch.Tensor, stats: InputStats, ratio: float, nm: NM) -> None:
    weight.copy_(alps_prune(weight, stats.hessian, ratio, nm))


ALPS = Pruner("alps", prune_layer=prune_layer, needs_hessian=True)
