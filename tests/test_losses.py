import math

import pytest
import torch
import torch.nn.functional as F

from livo.losses import diffusion_dpo_loss, livo_loss, livo_loss_terms


def _errors(*rows, grad=True):
    return [torch.tensor(r, dtype=torch.float64, requires_grad=grad) for r in rows]


def test_livo_loss_matches_hand_computed_value():
    theta_w, ref_w, theta_l, ref_l = _errors([0.1, 0.2], [0.1, 0.1], [0.3, 0.1], [0.2, 0.2])
    terms = livo_loss_terms(theta_w, ref_w, theta_l, ref_l, beta=10, alpha=5, gamma1=1, gamma2=0.5)
    # hinge_w = relu(1 + 10·[0, 0.1]) = [1, 2]; hinge_l = relu(0.5 + 5·[-0.1, 0.1]) = [0, 1]
    assert terms["hinge_w"].tolist() == pytest.approx([1.0, 2.0])
    assert terms["hinge_l"].tolist() == pytest.approx([0.0, 1.0])
    assert terms["loss"].item() == pytest.approx(2.0)
    assert livo_loss(theta_w, ref_w, theta_l, ref_l, beta=10, alpha=5).item() == pytest.approx(2.0)


def test_both_margins_met_gives_zero_loss_and_zero_gradient():
    # θw − rw = −0.01 → 1 + 1000·(−0.01) = −9 ≤ 0;  rl − θl = −0.01 → 0.5 + 500·(−0.01) = −4.5 ≤ 0
    theta_w, ref_w, theta_l, ref_l = _errors([0.09, 0.19], [0.1, 0.2], [0.31, 0.41], [0.3, 0.4])
    loss = livo_loss(theta_w, ref_w, theta_l, ref_l)
    loss.backward()
    assert loss.item() == 0.0
    assert theta_w.grad.abs().sum().item() == 0.0
    assert theta_l.grad.abs().sum().item() == 0.0


def test_only_first_hinge_active_gives_gradient_beta_over_batch():
    batch = 4
    theta_w, ref_w = _errors([0.2] * batch, [0.2] * batch)  # hinge_w = γ1 = 1 > 0: active
    theta_l, ref_l = _errors([0.5] * batch, [0.2] * batch)  # 0.5 + 500·(−0.3) < 0: inactive
    livo_loss(theta_w, ref_w, theta_l, ref_l).backward()
    assert theta_w.grad.tolist() == pytest.approx([1000.0 / batch] * batch)
    assert ref_w.grad.tolist() == pytest.approx([-1000.0 / batch] * batch)
    assert theta_l.grad.abs().sum().item() == 0.0


def test_only_second_hinge_active_gives_gradient_alpha_over_batch():
    batch = 2
    theta_w, ref_w = _errors([0.1] * batch, [0.2] * batch)  # 1 + 1000·(−0.1) < 0: inactive
    theta_l, ref_l = _errors([0.2] * batch, [0.2] * batch)  # hinge_l = γ2 = 0.5: active
    loss = livo_loss(theta_w, ref_w, theta_l, ref_l)
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert theta_l.grad.tolist() == pytest.approx([-500.0 / batch] * batch)
    assert theta_w.grad.abs().sum().item() == 0.0


def test_paired_violating_hinge_measures_the_violating_rise_against_the_aligned_one():
    # per sample: (rl − θl) − (rw − θw); sample 0: the token hurts both images by 0.1 — the paper's hinge counts it
    # as met, the paired one does not; sample 1: only the violating image gets worse — met either way
    theta_w, ref_w, theta_l, ref_l = _errors([0.3, 0.2], [0.2, 0.2], [0.3, 0.4], [0.2, 0.2])
    paper = livo_loss_terms(theta_w, ref_w, theta_l, ref_l, beta=10, alpha=5, gamma2=0.5)
    paired = livo_loss_terms(theta_w, ref_w, theta_l, ref_l, beta=10, alpha=5, gamma2=0.5, paired_violating=True)
    # paper: relu(0.5 + 5·[−0.1, −0.2]) = [0, 0]; paired: relu(0.5 + 5·([−0.1, −0.2] − [−0.1, 0])) = [0.5, 0]
    assert paper["hinge_l"].tolist() == pytest.approx([0.0, 0.0])
    assert paired["hinge_l"].tolist() == pytest.approx([0.5, 0.0])
    assert paired["hinge_w"].tolist() == pytest.approx(paper["hinge_w"].tolist())
    paired["hinge_l"].sum().backward()
    # the active paired hinge pushes the violating error up and the aligned error down, each with weight α
    assert theta_l.grad.tolist() == pytest.approx([-5.0, 0.0])
    assert theta_w.grad.tolist() == pytest.approx([5.0, 0.0])


def test_diffusion_dpo_loss_matches_closed_form():
    theta_w, ref_w, theta_l, ref_l = _errors([0.1001, 0.2], [0.1, 0.2002], [0.3, 0.1], [0.3001, 0.1])
    loss = diffusion_dpo_loss(theta_w, ref_w, theta_l, ref_l, beta=5000)
    margins = [(0.1001 - 0.1) - (0.3 - 0.3001), (0.2 - 0.2002) - (0.1 - 0.1)]
    expected = sum(-math.log(1 / (1 + math.exp(2500 * m))) for m in margins) / 2  # −log σ(−½β·m)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # at zero margin DPO is log 2 per sample
    zero = _errors([0.1], [0.1], [0.2], [0.2])
    assert diffusion_dpo_loss(*zero).item() == pytest.approx(math.log(2))


def test_dpo_upper_bounded_by_its_split_form():
    # softplus is subadditive: L_dpo <= softplus(β'(θw−rw)) + softplus(−β'(θl−rl)), the bound LiVO's hinges relax
    g = torch.Generator().manual_seed(0)
    tw, rw, tl, rl = (torch.rand(64, generator=g, dtype=torch.float64) * 1e-3 for _ in range(4))
    half = 2500.0
    per_sample_dpo = F.softplus(half * ((tw - rw) - (tl - rl)))
    bound = F.softplus(half * (tw - rw)) + F.softplus(-half * (tl - rl))
    assert bool((per_sample_dpo <= bound + 1e-12).all())


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B\]"):
        livo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError):
        diffusion_dpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1))
