"""The LAMM loss terms against values worked by hand on a 3-class toy."""
import math

import pytest
import torch

from lamm_cl.losses import LammWeights, feature_loss, lamm_loss, logits_loss, param_loss

# Toy: 3 classes, one image. z = [0, 0, 0] (LAMM logits), z0 = [2 ln 2, 0, 0], T = 2.
# softmax(z/T) = [1/3, 1/3, 1/3]; softmax(z0/T) = softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4].
Z = torch.tensor([[0.0, 0.0, 0.0]])
Z0 = torch.tensor([[2 * math.log(2), 0.0, 0.0]])


def test_param_loss_is_a_sum_of_squares():
    # ||[1, 2] - [0, 0]||^2 + ||[0.5, 0] - [0, 0]||^2 = 5 + 0.25
    pairs = [(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)), (torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2))]
    assert float(param_loss(pairs)) == pytest.approx(5.25)


def test_feature_loss_is_mean_one_minus_cosine():
    # cos([1,0],[1,0]) = 1 -> 0; cos([1,0],[0.5, sqrt(3)/2]) = 0.5 -> 0.5; cos([2,0],[0,3]) = 0 -> 1
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    t0 = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 3.0]])
    assert float(feature_loss(t, t0)) == pytest.approx((0 + 0.5 + 1) / 3)


def test_feature_loss_stops_gradient_into_the_target():
    t = torch.tensor([[1.0, 0.2]], requires_grad=True)
    t0 = torch.tensor([[0.3, 1.0]], requires_grad=True)
    feature_loss(t, t0).backward()
    assert t.grad is not None and t0.grad is None


def test_logits_loss_reference_is_soft_target_cross_entropy():
    # -sum_c (1/3) log([1/2, 1/4, 1/4]) = -(1/3) ln(1/32) = (5/3) ln 2; times T^2 = 4
    expected = 4 * (5 / 3) * math.log(2)
    assert float(logits_loss(Z, Z0, 2.0, "reference")) == pytest.approx(expected, rel=1e-6)


def test_logits_loss_reference_keeps_the_gradient_of_the_lamm_logits():
    z = Z.clone().requires_grad_(True)
    logits_loss(z, Z0, 2.0, "reference").backward()
    # d/dz of -T^2 sum_c softmax(z/T)_c log q_c, for one row: T p (log q - sum_c p_c log q_c) * (-1)
    p = torch.softmax(Z / 2, dim=-1)
    log_q = torch.log_softmax(Z0 / 2, dim=-1)
    torch.testing.assert_close(z.grad, -2 * p * (log_q - (p * log_q).sum(-1, keepdim=True)))


def test_logits_loss_kl():
    # KL([1/2, 1/4, 1/4] || [1/3]*3) = 1/2 ln(3/2) + 2 * 1/4 ln(3/4); times T^2 = 4
    expected = 4 * (0.5 * math.log(1.5) + 0.5 * math.log(0.75))
    assert float(logits_loss(Z, Z0, 2.0, "kl")) == pytest.approx(expected, rel=1e-6)


def test_unknown_logits_kind():
    with pytest.raises(ValueError, match=r"^logits_kind must be 'reference' or 'kl', got 'js'$"):
        logits_loss(Z, Z0, 2.0, "js")


def test_param_loss_of_no_class_is_zero_and_leaves_the_anchor_alone():
    assert float(param_loss([])) == 0.0
    m = torch.tensor([[1.0, 2.0]], requires_grad=True)
    m0 = torch.tensor([[0.5, 0.0]], requires_grad=True)
    param_loss([(m, m0)]).backward()
    assert m0.grad is None
    torch.testing.assert_close(m.grad, torch.tensor([[1.0, 4.0]]))  # 2 (m - m0)


def test_default_weights_are_the_references():
    # lambda_p 1 (the config's auto resolves it), lambda_f 1, lambda_l 0.05, T 2, LAMM's own logits term
    w = LammWeights()
    assert (w.param, w.feature, w.logits, w.temperature, w.logits_kind) == (1.0, 1.0, 0.05, 2.0, "reference")


def test_total_is_ce_plus_weighted_terms():
    # two samples of two classes, so that the feature term counts both (see the one-class tests below)
    z, z0 = Z.repeat(2, 1), Z0.repeat(2, 1)
    y = torch.tensor([0, 1])
    t_y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t0_y = torch.tensor([[0.5, math.sqrt(3) / 2], [1.0, 0.0]])  # 1 - cos: 0.5 and 0 -> mean 0.25
    pairs = [(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))]
    w = LammWeights(param=0.5, feature=2.0, logits=0.05, temperature=2.0)
    total, parts = lamm_loss(z, z0, y, t_y, t0_y, pairs, w)
    ce = math.log(3)  # uniform logits over 3 classes
    expected = ce + 0.5 * 5.0 + 2.0 * 0.25 + 0.05 * 4 * (5 / 3) * math.log(2)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce) and parts["param"] == pytest.approx(5.0)
    assert parts["feature"] == pytest.approx(0.25) and parts["logits"] == pytest.approx(4 * (5 / 3) * math.log(2))


# --------------------------------------------------------------------------- issue 11.4: one-class batches

def _reference_feature_loss(t_all, t0_all, label):
    """gaojingsheng/LAMM trainers/coop.py FeatureLoss.forward, replayed: sample i counts only when
    the batch holds a label other than label[i]; the sum is divided by the samples counted."""
    loss, n = 0.0, 0
    for i in range(len(label)):
        if int((label != label[i]).sum()) > 0:
            a, b = t_all[label[i]], t0_all[label[i]]
            loss += 1.0 - float(a @ b / (a.norm() * b.norm()))
            n += 1
    return loss / n if n else 0.0


def test_feature_loss_of_a_one_class_batch_is_zero():
    # cos([1,0],[0,1]) = 0: a plain mean would give 1 for each sample; the reference counts none
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t0 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([2, 2, 2])
    assert float(feature_loss(t, t0, y)) == 0.0
    assert float(feature_loss(t, t0)) == pytest.approx(1.0)  # without labels every sample counts


def test_feature_loss_with_labels_replays_the_reference():
    torch.manual_seed(0)
    t_all, t0_all = torch.randn(4, 5), torch.randn(4, 5)  # text features of 4 classes
    for label in ([1, 1, 1, 1], [0, 1, 1, 3, 0], [2], [3, 2]):
        y = torch.tensor(label)
        ours = float(feature_loss(t_all[y], t0_all[y], y))
        assert ours == pytest.approx(_reference_feature_loss(t_all, t0_all, y), abs=1e-6)


def test_lamm_loss_of_a_one_class_batch_has_no_feature_term():
    y = torch.tensor([0, 0])
    t_y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t0_y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    w = LammWeights(param=0.0, feature=1.0, logits=0.0)
    total, parts = lamm_loss(Z.repeat(2, 1), Z0.repeat(2, 1), y, t_y, t0_y, [], w)
    assert parts["feature"] == 0.0 and float(total) == pytest.approx(math.log(3), rel=1e-6)


# A second row, the first one mirrored: z = [2 ln 2, 0, 0], z0 = [0, 0, 0], T = 2.
# softmax(z/T) = [1/2, 1/4, 1/4]; softmax(z0/T) = [1/3, 1/3, 1/3].
Z_2 = torch.tensor([[0.0, 0.0, 0.0], [2 * math.log(2), 0.0, 0.0]])
Z0_2 = torch.tensor([[2 * math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("kind, row0, row1", [
    # reference: row 0 as above; row 1: -sum_c p_c ln(1/3) = ln 3; both times T^2 = 4
    ("reference", 4 * (5 / 3) * math.log(2), 4 * math.log(3)),
    # kl: row 0 as above; row 1: KL(uniform || [1/2, 1/4, 1/4]) = 1/3 [ln(2/3) + 2 ln(4/3)]
    ("kl", 4 * (0.5 * math.log(1.5) + 0.5 * math.log(0.75)),
     4 * (math.log(2 / 3) + 2 * math.log(4 / 3)) / 3),
])
def test_logits_loss_averages_over_the_batch(kind, row0, row1):
    # a sum over the batch would multiply lambda_l by the batch size
    assert float(logits_loss(Z_2[:1], Z0_2[:1], 2.0, kind)) == pytest.approx(row0, rel=1e-6)
    assert float(logits_loss(Z_2[1:], Z0_2[1:], 2.0, kind)) == pytest.approx(row1, rel=1e-6)
    assert float(logits_loss(Z_2, Z0_2, 2.0, kind)) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_logits_loss_kl_passes_no_gradient_to_the_teacher():
    z0 = Z0_2.clone().requires_grad_(True)
    z = Z_2.clone().requires_grad_(True)
    logits_loss(z, z0, 2.0, "kl").backward()
    assert z0.grad is None
    # d/dz of T^2 KL(q || softmax(z/T)) averaged over B rows is T (p - q) / B, p = softmax(z/T)
    p = torch.softmax(Z_2 / 2, dim=-1)
    q = torch.softmax(Z0_2 / 2, dim=-1)
    torch.testing.assert_close(z.grad, 2 * (p - q) / 2)


def test_lamm_loss_passes_its_logits_kind_on():
    # the one row above, T = 2: softmax(z0/T) = [1/2, 1/4, 1/4], softmax(z/T) = [1/3, 1/3, 1/3], so
    # kl = T^2 (1/2 ln(3/2) + 2 * 1/4 ln(3/4)); a lamm_loss that dropped the kind would give the reference value
    kl = 4 * (0.5 * math.log(1.5) + 0.5 * math.log(0.75))
    reference = 4 * (5 / 3) * math.log(2)
    y = torch.tensor([0])
    t = torch.tensor([[1.0, 0.0]])
    for kind, expected in (("kl", kl), ("reference", reference)):
        w = LammWeights(param=0.0, feature=0.0, logits=1.0, temperature=2.0, logits_kind=kind)
        _, parts = lamm_loss(Z, Z0, y, t, t, [], w)
        assert parts["logits"] == pytest.approx(expected, rel=1e-6), kind


def test_logits_loss_defaults_are_the_references():
    # T = 2 and LAMM's own soft-target term when nothing is said
    assert float(logits_loss(Z, Z0)) == pytest.approx(4 * (5 / 3) * math.log(2), rel=1e-6)
