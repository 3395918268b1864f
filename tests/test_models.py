import pytest
import torch

from c100 import UserError
from c100.models import count_parameters, create_model, list_models
from c100.models.fold import fold_batchnorm
from c100.models.seed import same_pad


def _resnet_params(layers, classes=100):
    """Count a CIFAR ResNet's parameters from its shape: convs without bias, BN scale+shift, fc."""
    total = 3 * 64 * 9 + 2 * 64  # stem conv + BN
    cin = 64
    for planes, blocks in zip([64, 128, 256, 512], layers, strict=True):
        for _ in range(blocks):
            total += cin * planes * 9 + planes * planes * 9 + 4 * planes
            if cin != planes:
                total += cin * planes + 2 * planes  # 1x1 projection + BN
            cin = planes
    return total + 512 * classes + classes


def _seed_params(classes=100):
    total = 3 * 64 * 9 + 64 + 2 * 64  # biased stem conv + BN
    cin = 64
    for planes, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
        total += (cin * 9 + 1) * planes + (planes * 9 + 1) * planes + 4 * planes  # biased convs + 2 BN
        if stride == 2:
            total += (cin + 1) * planes + 2 * planes
        cin = planes
    return total + 512 * classes + classes


def _vgg16_params(classes=100):
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for v in cfg:
        total += cin * v * 9 + 2 * v
        cin = v
    return total + 512 * classes + classes


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_220_132), ("resnet34", 21_328_292), ("vgg16", _vgg16_params()), ("resnet18-seed", _seed_params()),
])
def test_parameter_counts(name, expected):
    assert count_parameters(create_model(name)) == expected


def test_formula_matches_the_published_resnet_counts():
    assert _resnet_params([2, 2, 2, 2]) == 11_220_132 and _resnet_params([3, 4, 6, 3]) == 21_328_292


@pytest.mark.parametrize("name", [n for n in list_models() if n != "tiny-net"])
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_model_shapes_follow_keras_same_padding():
    assert same_pad(30, 3, 2) == (0, 1)  # TF pads after, not before, for stride 2 on an even size
    assert same_pad(15, 3, 2) == (1, 1)
    assert same_pad(30, 1, 2) == (0, 0)
    model = create_model("resnet18-seed")
    sizes = []
    model.blocks.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    model.stem.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    model(torch.randn(1, 3, 32, 32))
    assert sizes == [30, 4]  # valid stem 32 -> 30; then 30 -> 15 -> 8 -> 4


@pytest.mark.parametrize("name, calls", [("resnet18-seed", 17), ("resnet18", 17), ("resnet34", 33), ("vgg16", 13)])
def test_every_relu_is_a_module(name, calls):
    """Forward hooks on nn.ReLU see every activation (benchmarks/archive/dead_units.py counts on it): one call for
    the stem and two per basic block in the ResNets, one per convolution in VGG16."""
    model, seen = create_model(name).eval(), []
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(seen) == calls


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model 'resnet19'; choose one of: .*resnet18"):
        create_model("resnet19")


def _conv_step(conv, x, g, precision):
    """Output and gradients of one convolution's forward and backward, under bf16 autocast or in fp32."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = conv(x)
    y.backward(g.to(y.dtype))
    return y.float(), x.grad, conv.weight.grad, conv.bias.grad if conv.bias is not None else None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel,stride,padding,px,bias,nhwc", [
    (3, 1, 1, 4, False, True),   # 16 output pixels: GEMMs
    (3, 2, 1, 5, True, False),   # strided, 3x3 output, with a bias
    (1, 2, 0, 4, False, True),   # ResNet's 1x1 projection shortcut
    (3, 1, 1, 6, True, True),    # 36 output pixels: oneDNN
])
def test_small_map_gemm_conv_matches_conv2d(monkeypatch, kernel, stride, padding, px, bias, nhwc, precision):
    from c100.models import cpu_conv

    calls, real = [], cpu_conv.patch_rows
    monkeypatch.setattr(cpu_conv, "patch_rows", lambda *a: calls.append(1) or real(*a))  # count GEMM uses
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(5, 7, kernel, stride, padding, bias=bias)
    conv = torch.nn.Conv2d(5, 7, kernel, stride, padding, bias=bias)
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, px, px)
    if nhwc:  # the input and the weights, as the trainer lays them out
        x = x.contiguous(memory_format=torch.channels_last)
        ref, conv = ref.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    g = torch.randn_like(ref(x))
    expected = _conv_step(ref, x, g, precision)
    with cpu_conv.small_map_gemm():
        got = _conv_step(conv, x, g, precision)
    assert type(conv) is torch.nn.Conv2d  # the module is not touched
    tol = {"rtol": 2e-2, "atol": 2e-2} if precision == "bf16" else {"rtol": 1e-5, "atol": 1e-5}
    for name, a, b in zip(["output", "input grad", "weight grad", "bias grad"], got, expected, strict=True):
        if b is not None:
            assert a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, **tol, msg=name)
    # the weight's exact strides (a 1x1 weight's size-1 dims too), which DDP's gradient buckets share
    assert conv.weight.grad.stride() == conv.weight.stride()
    out_px = g.shape[2] * g.shape[3]
    assert bool(calls) == (out_px <= cpu_conv.MAX_GEMM_PIXELS)


def test_patch_rows_match_torch_unfold_and_fold_rows_is_their_adjoint():
    from c100.models.cpu_conv import fold_rows, patch_rows, unfold_patches

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.unfold(x, (3, 3), padding=(1, 1), stride=(2, 2))  # N, C*3*3, Ho*Wo
    assert torch.equal(unfold_patches(x, (3, 3), (2, 2), (1, 1)), ref.transpose(1, 2).reshape(-1, 27))
    rows = patch_rows(x, (3, 3), (2, 2), (1, 1))  # taps first, channels last
    assert torch.equal(rows.view(-1, 9, 3).transpose(1, 2).reshape(-1, 27), unfold_patches(x, (3, 3), (2, 2), (1, 1)))
    # fold_rows scatters back what patch_rows gathered: <patch_rows(x), r> == <x, fold_rows(r)> for any r
    r = torch.randn_like(rows)
    torch.testing.assert_close((rows * r).sum(), (x * fold_rows(r, x.shape, (3, 3), (2, 2), (1, 1))).sum())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_small_map_gemm_resnet18_same_training_step(monkeypatch, precision):
    from c100.models import cpu_conv

    calls, real = [], cpu_conv._GemmConv.apply
    monkeypatch.setattr(cpu_conv._GemmConv, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    ref = create_model("resnet18").to(memory_format=torch.channels_last)
    fast = create_model("resnet18").to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    x, y = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last), torch.randint(0, 100, (4,))
    bf16 = precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        torch.nn.functional.cross_entropy(ref(x), y).backward()
    with cpu_conv.small_map_gemm(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        torch.nn.functional.cross_entropy(fast(x), y).backward()
    assert len(calls) == 10  # at 16 px, layer3 (4x4) and layer4 (2x2): 4 3x3 convs + a 1x1 shortcut each
    with cpu_conv.small_map_gemm(), torch.no_grad():
        fast(x)
    assert len(calls) == 10  # inference: plain convolutions
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert b.grad.dtype == torch.float32 and b.grad.stride() == a.grad.stride(), name  # as the weight's layout
        if bf16:  # rounding to bf16 differs between the two paths: the gradients agree to a few percent
            assert (b.grad - a.grad).norm() <= 0.05 * a.grad.norm() + 1e-6, name
        else:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert fast.state_dict().keys() == ref.state_dict().keys()


def test_whitening_filters_decorrelate_patches():
    from c100.models.whiten import EPS, patch_covariance, whitening_filters

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)  # correlated channels and smooth images: far from white
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(300, 3, 8, 8, generator=g).cumsum(-1))
    cov = patch_covariance(images)
    patches = torch.nn.functional.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 27)
    assert torch.allclose(cov, patches.t() @ patches / len(patches))  # chunked sum = one pass
    w = whitening_filters(images).double().view(54, 27)
    assert torch.equal(w[27:], -w[:27])
    white = w[:27] @ cov @ w[:27].t()  # the filtered patches' covariance: diag(lambda / (lambda + eps))
    eig = torch.linalg.eigvalsh(cov).flip(0)
    assert torch.allclose(white, torch.diag(eig / (eig + EPS)), atol=1e-4)
    assert eig[0] / eig[-1] > 100  # the input really was correlated


def test_whiten_stem_sets_only_the_stem():
    from c100.models.whiten import whiten_stem, whitening_filters

    torch.manual_seed(0)
    model = create_model("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(20, 3, 32, 32)
    assert whiten_stem(model, images) == 54
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert torch.allclose(after["conv1.weight"][:54], whitening_filters(images))
    assert torch.equal(after["conv1.weight"][54:], before["conv1.weight"][54:])  # 10 random filters stay
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != "conv1.weight")
    with pytest.raises(UserError, match="square stem over 1 channels"):
        whiten_stem(model, torch.randn(4, 1, 32, 32))


def _with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so a fold that drops or misplaces them shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


@pytest.mark.parametrize("name,nhwc", [("resnet18", True), ("vgg16", True), ("resnet18", False)])
def test_fold_batchnorm_same_outputs_without_batchnorm(name, nhwc):
    torch.manual_seed(0)
    model = _with_running_stats(create_model(name))
    layout = torch.channels_last if nhwc else torch.contiguous_format
    model = model.to(memory_format=layout)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=layout) for c in convs)  # the model's layout
    # the model itself is untouched: same weights, still its BN layers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0


def test_fold_batchnorm_leaves_untraceable_model_unfolded():
    torch.manual_seed(0)
    model = _with_running_stats(create_model("resnet18-seed"))
    folded = fold_batchnorm(model)  # fx cannot trace its input-size-dependent "same" padding
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
    assert folded is not model and not folded.training
