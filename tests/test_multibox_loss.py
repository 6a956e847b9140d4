"""MultiBoxLoss against the reference's golden outputs, and the cases the reference
cannot handle (images without faces, half-precision predictions, any device)."""
import numpy as np
import pytest
import torch

from layers.modules import MultiBoxLoss
from tests.conftest import need_shared
from utils.box_utils import match

VARIANCES = [0.1, 0.2]


@pytest.fixture(scope='module')
def golden():
    return dict(np.load(need_shared('golden', 'multibox_loss.npz')))


def _criterion():
    return MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)


def _inputs(g, device='cpu', dtype=torch.float32):
    preds = tuple(torch.from_numpy(g[k]).to(device=device, dtype=dtype) for k in ('loc', 'conf', 'landm'))
    targets = [torch.from_numpy(g['target0']).to(device), torch.from_numpy(g['target1']).to(device)]
    return preds, torch.from_numpy(g['priors']).to(device), targets


def _assert_golden_losses(out, g, rtol=1e-5):
    for value, key in zip(out, ('loss_l', 'loss_c', 'loss_landm')):
        np.testing.assert_allclose(value.item(), float(g[key]), rtol=rtol, err_msg=key)


def test_golden_losses(golden):
    _assert_golden_losses(_criterion()(*_inputs(golden)), golden)


def test_golden_match_targets(golden):
    preds, priors, targets = _inputs(golden)
    num, num_priors = len(targets), priors.shape[0]
    loc_t = torch.zeros(num, num_priors, 4)
    landm_t = torch.zeros(num, num_priors, 10)
    conf_t = torch.zeros(num, num_priors, dtype=torch.long)
    for idx, t in enumerate(targets):
        match(0.35, t[:, :4], priors, VARIANCES, t[:, -1], t[:, 4:14], loc_t, conf_t, landm_t, idx)
    np.testing.assert_array_equal(conf_t.numpy(), golden['conf_t'])
    pos, pos_landm = conf_t != 0, conf_t > 0
    np.testing.assert_allclose(loc_t[pos].numpy(), golden['loc_t_pos'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(landm_t[pos_landm].numpy(), golden['landm_t_pos'], rtol=1e-5, atol=1e-5)


def test_gradients_flow_to_all_three_outputs(golden):
    preds, priors, targets = _inputs(golden)
    preds = tuple(p.clone().requires_grad_(True) for p in preds)
    loss_l, loss_c, loss_landm = _criterion()(preds, priors, targets)
    (2.0 * loss_l + loss_c + loss_landm).backward()
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_image_without_faces_adds_nothing(golden):
    """An empty image has no positives, hence (reference semantics) no mined negatives:
    appending one to the batch leaves every loss unchanged."""
    preds, priors, targets = _inputs(golden)
    torch.manual_seed(0)
    extra = tuple(torch.cat([p, torch.randn_like(p[:1])], 0) for p in preds)
    out = _criterion()(extra, priors, targets + [torch.zeros(0, 15)])
    _assert_golden_losses(out, golden)


def test_batch_of_only_empty_images_is_finite_and_backpropagates(golden):
    preds, priors, _ = _inputs(golden)
    preds = tuple(p.clone().requires_grad_(True) for p in preds)
    out = _criterion()(preds, priors, [torch.zeros(0, 15), torch.zeros(0, 15)])
    assert all(torch.isfinite(o) and o.item() == 0 for o in out)
    sum(out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in preds)


def test_half_precision_predictions_are_computed_in_float32(golden):
    preds, priors, targets = _inputs(golden, dtype=torch.float16)
    out = _criterion()(preds, priors, targets)
    assert all(o.dtype == torch.float32 for o in out)
    _assert_golden_losses(out, golden, rtol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_golden_losses_on_cuda(golden):
    out = _criterion()(*_inputs(golden, device='cuda'))
    assert all(o.device.type == 'cuda' for o in out)
    _assert_golden_losses(out, golden, rtol=1e-4)


def test_variance_is_the_config_s(golden):
    """The encoding variances come from cfg['variance'] (the reference's values by default)."""
    from data import cfg_re50
    _assert_golden_losses(MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, variance=cfg_re50['variance'])(
        *_inputs(golden)), golden)
    # Half the centre variance doubles every encoded centre offset: the box and landmark
    # losses change, while matching (and so the class loss) does not depend on it.
    loss_l, loss_c, loss_landm = MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, variance=[0.05, 0.2])(
        *_inputs(golden))
    assert abs(loss_l.item() - float(golden['loss_l'])) > 0.01
    assert abs(loss_landm.item() - float(golden['loss_landm'])) > 0.01
    np.testing.assert_allclose(loss_c.item(), float(golden['loss_c']), rtol=1e-5)
