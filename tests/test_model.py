"""The RetinaFace network: state_dict layout, published weights and golden outputs."""
import json
import math

import cv2
import numpy as np
import pytest
import torch

from data import cfg_mnet, cfg_re50
from models.retinaface import RetinaFace, load_pretrained_backbone
from tests.conftest import GOLDEN_IMAGES, golden_image_path, need_shared
from utils.checkpoint import load_model

BGR_MEAN = np.array((104, 117, 123), dtype=np.float32)


def fill_deterministic(model):
    """Fill every tensor as ../shared/README.md describes for the *_filled_crop goldens."""
    sd = model.state_dict()
    for i, key in enumerate(sorted(sd)):
        t = sd[key]
        if key.endswith('num_batches_tracked'):
            continue
        g = np.arange(t.numel(), dtype=np.float64)
        base = np.sin(0.61 * g + 1.7 * i)
        if key.endswith('running_var'):
            v = 0.5 + 0.25 * (base + 1)
        elif key.endswith('running_mean'):
            v = 0.1 * base
        elif key.endswith('bias'):
            v = 0.05 * base
        elif t.dim() == 1:
            v = 1 + 0.1 * base
        else:
            v = base * math.sqrt(2.0 / t[0].numel())
        t.copy_(torch.from_numpy(v.reshape(t.shape).astype(np.float32)))
    return model


@pytest.mark.parametrize('name,cfg', [('mobilenet0.25', cfg_mnet), ('Resnet50', cfg_re50)])
def test_state_dict_keys_shapes_and_order(name, cfg):
    golden = json.loads(need_shared('golden', 'state_dict_shapes.json').read_text())[name]
    sd = RetinaFace(cfg, phase='test').state_dict()
    assert list(sd) == list(golden)
    assert {k: list(v.shape) for k, v in sd.items()} == golden


@pytest.mark.parametrize('cfg,params', [(cfg_mnet, 426_608), (cfg_re50, 27_293_600)])
def test_parameter_count(cfg, params):
    assert sum(p.numel() for p in RetinaFace(cfg).parameters()) == params


def test_constructor_reads_no_files(tmp_path, monkeypatch):
    # The reference's constructor reads ./weights/mobilenetV1X0.25_pretrain.tar; ours must not.
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(torch, 'load', lambda *a, **k: calls.append(a))
    RetinaFace(cfg_mnet, phase='train')
    RetinaFace(cfg_re50, phase='train')
    assert calls == []


def test_published_weights_load_strict():
    path = need_shared('weights', 'mobilenet0.25_Final.pth')
    net = RetinaFace(cfg_mnet, phase='test')
    state = torch.load(path, map_location='cpu', weights_only=True)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.fixture(scope='module')
def mnet_published():
    net = RetinaFace(cfg_mnet, phase='test')
    load_model(net, need_shared('weights', 'mobilenet0.25_Final.pth'))
    return net.eval()


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_raw_outputs_match_golden(mnet_published, name):
    golden = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    img_path = golden_image_path(name)
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR).astype(np.float32) - BGR_MEAN
    x = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)  # [H, W, 3] -> [1, 3, H, W]
    with torch.inference_mode():
        loc, conf, landms = mnet_published(x)
    # Tolerances from the foundation issue: 1e-4 for the regressions, 1e-5 for the scores.
    np.testing.assert_allclose(loc.numpy(), golden['loc'], rtol=0, atol=1e-4)
    np.testing.assert_allclose(landms.numpy(), golden['landms'], rtol=0, atol=1e-4)
    np.testing.assert_allclose(conf.numpy(), golden['conf'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('cfg,fname', [(cfg_mnet, 'mnet_filled_crop.npz'), (cfg_re50, 'resnet50_filled_crop.npz')])
def test_filled_weights_match_golden(cfg, fname):
    golden = np.load(need_shared('golden', fname))
    net = fill_deterministic(RetinaFace(cfg, phase='test')).eval()
    with torch.inference_mode():
        outputs = net(torch.from_numpy(golden['input']))
    for key, out in zip(('loc', 'conf', 'landms'), outputs):
        ref = golden[key]
        scale = np.abs(ref).max()
        # 1e-4 relative to the output's scale.
        assert np.abs(out.numpy() - ref).max() <= 1e-4 * scale, key


def test_train_phase_returns_logits_test_phase_softmax():
    torch.manual_seed(0)
    train_net = RetinaFace(cfg_mnet, phase='train').eval()
    test_net = RetinaFace(cfg_mnet, phase='test').eval()
    test_net.load_state_dict(train_net.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        loc_a, logits, lm_a = train_net(x)
        loc_b, probs, lm_b = test_net(x)
    assert logits.shape == (2, 2 * (8 * 12 + 4 * 6 + 2 * 3), 2)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
    torch.testing.assert_close(loc_a, loc_b)
    torch.testing.assert_close(lm_a, lm_b)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = RetinaFace(cfg_mnet, phase='train')
    loc, conf, landms = net(torch.randn(2, 3, 64, 64))
    (loc.square().mean() + conf.square().mean() + landms.square().mean()).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_pretrained_mobilenet_backbone_loads():
    path = need_shared('weights', 'mobilenetV1X0.25_pretrain.tar')
    net = RetinaFace(cfg_mnet, phase='train')
    load_pretrained_backbone(net, cfg_mnet, path)
    raw = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    torch.testing.assert_close(net.body.stage1[0][0].weight, raw['module.stage1.0.0.weight'])


def test_pretrained_backbone_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.tar'):
        load_pretrained_backbone(RetinaFace(cfg_mnet), cfg_mnet, tmp_path / 'nope.tar')


def test_pretrained_backbone_wrong_architecture_is_clear():
    path = need_shared('weights', 'mobilenetV1X0.25_pretrain.tar')
    with pytest.raises(ValueError, match='not an ImageNet Resnet50 backbone'):
        load_pretrained_backbone(RetinaFace(cfg_re50), cfg_re50, path)


def test_resnet50_pretrained_backbone_from_torchvision_file(tmp_path):
    import torchvision
    src = torchvision.models.resnet50(weights=None)
    path = tmp_path / 'resnet50_imagenet.pth'
    torch.save(src.state_dict(), path)
    net = RetinaFace(cfg_re50, phase='train')
    load_pretrained_backbone(net, cfg_re50, path)
    torch.testing.assert_close(net.body.layer4[2].conv3.weight, src.layer4[2].conv3.weight)
