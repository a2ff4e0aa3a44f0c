"""Training loop, cost measurement, attention capture, plots and notebook set-up."""
import sys

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import tutorial_lib as tl
from tutorial_lib.capture import AttentionModule


def _tiny_net(channels=3, classes=4):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, classes))


def test_fit_is_deterministic_for_a_seed(capsys):
    data = tl.objects_on_clutter(128, seed=0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = _tiny_net()
        h = tl.fit(net, data, val=data, epochs=2, batch_size=32, progress=False, seed=1)
        runs.append((h, [p.detach().clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/2  loss ") and "val acc" in lines[0] and len(lines) == 4


def test_fit_takes_another_loss_and_metric_for_multi_label_targets(capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, 8, 8, generator=g)
    targets = torch.stack([x[:, 0].mean(dim=(1, 2)) > 0, x[:, 1].mean(dim=(1, 2)) > 0], dim=1).float()
    data = torch.utils.data.TensorDataset(x, targets)

    def exact_match(logits, y):
        return ((logits > 0) == (y > 0.5)).all(dim=1).float().mean().item()

    torch.manual_seed(0)
    net = _tiny_net(channels=2, classes=2)
    h = tl.fit(net, data, val=data, epochs=6, lr=1e-2, progress=False, seed=0,
               loss=torch.nn.functional.binary_cross_entropy_with_logits, metric=exact_match, metric_name="exact")
    assert h.metric_name == "exact" and h.train_loss[-1] < h.train_loss[0]
    assert "val exact" in capsys.readouterr().out.splitlines()[-1]
    result = tl.evaluate(net, data, loss=torch.nn.functional.binary_cross_entropy_with_logits, metric=exact_match,
                         metric_name="exact")
    assert set(result) == {"loss", "exact"} and result["exact"] == h.final_val > 0.5


def test_fit_slices_tensor_data_sets_and_uses_a_data_loader_otherwise():
    data = tl.objects_on_clutter(96, seed=0)

    class Wrapped(torch.utils.data.Dataset):              # not a pair of tensors: the DataLoader path
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    for train in (data, Wrapped()):
        torch.manual_seed(0)
        net = _tiny_net()
        h = tl.fit(net, train, epochs=1, batch_size=40, progress=False, verbose=False)
        assert len(h.train_loss) == 1 and 0 <= h.train_accuracy[0] <= 1


def test_mean_spread_over_seeds():
    assert tl.mean_spread([0.9]) == (0.9, 0.0)
    mean, spread = tl.mean_spread([0.9, 1.0, 0.8])
    assert abs(mean - 0.9) < 1e-12 and abs(spread - 0.1) < 1e-12
    assert tl.format_mean_spread([0.9, 1.0, 0.8]) == "0.900 ± 0.100 (3 seeds)"
    assert tl.format_mean_spread([0.9, 1.0, 0.8], percent=True) == "90.0 ± 10.0 % (3 seeds)"
    assert tl.format_mean_spread([-0.0001], digits=2) == "0.00 ± 0.00 (1 seed)"
    with pytest.raises(ValueError, match="at least one value"):
        tl.mean_spread([])


def test_importing_the_package_does_not_load_the_plotting_stack():
    import subprocess
    code = ("import sys, tutorial_lib as tl; tl.CBAM(32); assert 'matplotlib' not in sys.modules; "
            "tl.show_images; assert 'matplotlib' in sys.modules; assert 'fit' in dir(tl)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_package_sets_only_the_openmp_wait_policy():
    import os
    import subprocess
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OMP_WAIT_POLICY")
    code = ("import os, tutorial_lib, torch; "
            "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'; "
            "left = [k for k in ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_CBWR') if k in os.environ]; "
            "assert not left, left")
    env = {k: v for k, v in os.environ.items() if k not in names}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    # a user's own choices are kept as they are
    code = ("import os, tutorial_lib, torch; "
            "assert os.environ['OMP_WAIT_POLICY'] == 'ACTIVE'; assert os.environ['MKL_CBWR'] == 'COMPATIBLE'; "
            "assert torch.backends.cpu.get_cpu_capability() == 'DEFAULT'")
    env.update(OMP_WAIT_POLICY="ACTIVE", MKL_CBWR="COMPATIBLE", ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_fit_learns_an_easy_task_and_evaluate_agrees():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, 8, 8, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()            # the class is the sign of channel 0's mean
    data = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    net = _tiny_net(channels=2, classes=2)
    h = tl.fit(net, data, epochs=8, lr=1e-2, progress=False, verbose=False)
    assert h.train_loss[-1] < h.train_loss[0]
    result = tl.evaluate(net, data)
    assert result["accuracy"] > 0.75 and set(result) == {"loss", "accuracy"}
    assert not net.training


def test_fit_rejects_bad_budgets():
    with pytest.raises(ValueError, match="fit: expected epochs >= 1"):
        tl.fit(_tiny_net(), tl.objects_on_clutter(8), epochs=0, progress=False)


def test_count_parameters_and_flops_against_closed_forms():
    lin = nn.Linear(4, 3)
    assert tl.count_parameters(lin) == 15
    lin.bias.requires_grad_(False)
    assert tl.count_parameters(lin, trainable_only=True) == 12
    assert tl.count_flops(lin, torch.zeros(2, 4)) == 2 * 2 * 4 * 3           # 2 FLOPs per multiply-add
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert tl.count_flops(conv, torch.zeros(1, 3, 6, 7)) == 2 * 6 * 7 * 5 * 3 * 9
    assert tl.count_flops(lin, torch.zeros(2, 4, requires_grad=True), backward=True) > 48


def test_count_flops_counts_scaled_dot_product_attention_like_the_explicit_form():
    q, k, v = torch.randn(2, 1, 60, 16), torch.randn(2, 1, 30, 16), torch.randn(2, 1, 30, 8)

    def fused(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def explicit(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v

    expected = 2 * 2 * 60 * 30 * (16 + 8)                                   # two matrix products
    assert tl.count_flops(fused, q, k, v) == tl.count_flops(explicit, q, k, v) == expected
    grads = [t.clone().requires_grad_() for t in (q, k, v)]
    assert tl.count_flops(fused, *grads, backward=True) == tl.count_flops(explicit, *grads, backward=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is measured on Linux only")
def test_peak_memory_sees_a_temporary_allocation():
    def make_and_drop():
        t = torch.ones(2048, 4096)        # 32 MiB, freed before returning
        return float(t[0, 0])
    peak = tl.peak_memory(make_and_drop)
    assert 30 * 2**20 < peak < 48 * 2**20
    assert tl.peak_memory(lambda: None) < 4 * 2**20


def test_measure_latency_and_formatting():
    assert tl.measure_latency(torch.ones, 10, repeats=3, warmup=1) >= 0
    assert tl.format_bytes(1536) == "1.5 KiB" and tl.format_bytes(100) == "100 B" and tl.format_bytes(None) == "n/a"
    assert tl.format_bytes(64 * 2**20) == "64.0 MiB"
    assert tl.format_count(8564) == "8564" and tl.format_count(2_101_760) == "2.10 M"


class _Gate(AttentionModule):
    """A stand-in attention module: gates channels by the sigmoid of their means."""

    def forward(self, x, return_attention=False):
        gate = torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))
        maps = {"channel": gate}
        self._record(maps)
        return (x * gate, maps) if return_attention else x * gate


def test_capture_attention_collects_maps_by_module_name_and_cleans_up():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _Gate(), nn.Conv2d(4, 4, 1), _Gate())
    x = torch.randn(2, 3, 5, 5)
    with tl.capture_attention(net) as maps:
        net(x)
    assert set(maps) == {"1", "3"} and maps["1"]["channel"].shape == (2, 4, 1, 1)
    assert not maps["1"]["channel"].requires_grad
    assert not net[1].capturing
    with tl.capture_attention(net[1]) as own:
        net[1](torch.randn(1, 4, 2, 2))
    assert set(own) == {""}
    with pytest.raises(ValueError, match="capture_attention: expected a model containing"):
        with tl.capture_attention(nn.Linear(2, 2)):
            pass


def test_plots_have_titles_and_labelled_axes():
    imgs = torch.rand(5, 3, 16, 16)
    figs = [
        tl.show_images(imgs, title="t1", titles=list("abcde"), ncols=3),
        tl.show_images(imgs[:, 0], title="t2", masks=imgs[:, 0] > 0.5, vmin=0, vmax=1),
        tl.show_attention(imgs, torch.rand(5, 4, 4), title="t3", masks=imgs[:, 0] > 0.5),
        tl.show_attention(imgs, torch.rand(5, 4, 4), title="t4", value_range=(0, 1)),
    ]
    for fig, title in zip(figs, ["t1", "t2", "t3", "t4"]):
        assert fig._suptitle.get_text() == title
        assert fig._supxlabel.get_text() and fig._supylabel.get_text()
    fig = tl.plot_curves([1, 2, 3], {"a": [1, 2, 3], "b": [3, 2, 1]}, title="c", xlabel="x", ylabel="y", logy=True)
    ax = fig.axes[0]
    assert ax.get_title() == "c" and ax.get_xlabel() == "x" and ax.get_ylabel() == "y"
    assert figs[2].axes[-1].get_ylabel() == "attention (scaled per image)"
    assert figs[3].axes[-1].get_ylabel() == "gate value" and figs[3].axes[-1].get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="low < high"):
        tl.show_attention(imgs, torch.rand(5, 4, 4), value_range=(1, 0))
    with pytest.raises(ValueError, match="one map per image"):
        tl.show_attention(imgs, torch.rand(4, 4, 4))
    plt.close("all")


def test_setup_notebook_fixes_seed_threads_and_print_options(monkeypatch):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        tl.setup_notebook(seed=3, threads=1)
        a = torch.rand(3)
        assert torch.get_num_threads() == 1
        tl.setup_notebook(seed=3, threads=2)
        assert torch.equal(a, torch.rand(3))
        assert torch.get_num_threads() == 2
        assert str(torch.tensor([1.23456])) == "tensor([1.235])"
        # the machine's choice wins over the notebook's own
        monkeypatch.setenv("COURSE_THREADS", "1")
        tl.setup_notebook(seed=3, threads=2)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("COURSE_THREADS", "two")
        with pytest.raises(ValueError, match="COURSE_THREADS must be a whole number.*'two'"):
            tl.setup_notebook()
        monkeypatch.delenv("COURSE_THREADS")
        with pytest.raises(ValueError, match="thread count >= 1, but got 0"):
            tl.setup_notebook(threads=0)
    finally:
        torch.set_num_threads(before)


def test_recalibrate_batchnorm_averages_the_batch_statistics_of_the_final_weights():
    data = tl.objects_on_clutter(200, seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 4))
    before = [p.detach().clone() for p in net.parameters()]
    assert tl.recalibrate_batchnorm(net, data, batch_size=50) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())) and not net.training
    with torch.no_grad():
        conv = net[0](data.images)
    expected_mean = torch.stack([conv[i:i + 50].mean(dim=(0, 2, 3)) for i in range(0, 200, 50)]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean)
    assert net[1].momentum == 0.1
