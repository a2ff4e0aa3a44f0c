"""The error helpers give the documented messages; the shape checks catch what they promise."""
import pytest
import torch

from tutorial_lib.checks import (ShapeError, check_bool, check_choice, check_float, check_input,
                                 check_int, check_odd, check_shape, describe_shape, show_shape)


def test_check_input_accepts_and_returns_the_tensor():
    x = torch.zeros(2, 3, 4, 5)
    assert check_input("M", x, ndim=4, layout="(B, C, H, W)", channels=3) is x
    assert check_input("M", torch.zeros(2, 3, 4), ndim=(3, 4, 5), layout="(B, C, ...)") is not None


def test_check_input_rejects_non_tensors():
    with pytest.raises(TypeError, match=r"^M: expected the input to be a torch.Tensor \(B, C, H, W\), but got list$"):
        check_input("M", [1, 2], ndim=4, layout="(B, C, H, W)")


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_check_input_rejects_non_float_dtypes(dtype):
    with pytest.raises(TypeError, match=rf"^M: expected a floating-point input .* but got dtype {dtype}"):
        check_input("M", torch.zeros(1, 2, 3, 3, dtype=dtype), ndim=4, layout="(B, C, H, W)")


def test_check_input_wrong_ndim_message():
    with pytest.raises(ValueError, match=r"^SE: expected a 4-D input \(B, C, H, W\), but got a 3-D tensor of shape \(2, 3, 4\)$"):
        check_input("SE", torch.zeros(2, 3, 4), ndim=4, layout="(B, C, H, W)")
    with pytest.raises(ValueError, match=r"expected a 3-D or 4-D or 5-D input"):
        check_input("NL", torch.zeros(2, 3), ndim=(3, 4, 5), layout="(B, C, ...)")


def test_check_input_wrong_channels_message():
    with pytest.raises(ValueError, match=r"^SE: was built for 64 channels, but got an input with 32 channels \(shape \(1, 32, 7, 7\)\)$"):
        check_input("SE", torch.zeros(1, 32, 7, 7), ndim=4, layout="(B, C, H, W)", channels=64)


def test_check_input_empty():
    with pytest.raises(ValueError, match="non-empty"):
        check_input("M", torch.zeros(0, 3, 4, 4), ndim=4, layout="(B, C, H, W)")


def test_hyper_parameter_helpers():
    assert check_int("M", "reduction", 16) == 16
    with pytest.raises(TypeError, match=r"^M: expected reduction to be an integer, but got float 2.5$"):
        check_int("M", "reduction", 2.5)
    with pytest.raises(TypeError, match="integer, but got bool"):
        check_int("M", "reduction", True)
    with pytest.raises(ValueError, match=r"^M: expected reduction >= 1, but got 0$"):
        check_int("M", "reduction", 0)
    with pytest.raises(ValueError, match=r"^M: expected reduction <= 8, but got 9$"):
        check_int("M", "reduction", 9, maximum=8)
    assert check_float("M", "lam", 1) == 1.0
    with pytest.raises(ValueError, match=r"^M: expected lam > 0.0, but got 0.0$"):
        check_float("M", "lam", 0.0, minimum=0.0, strict_minimum=True)
    with pytest.raises(ValueError, match="but got nan"):
        check_float("M", "lam", float("nan"))
    assert check_choice("M", "mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^M: expected mode to be one of 'a', 'b', but got 'c'$"):
        check_choice("M", "mode", "c", ("a", "b"))
    assert check_odd("M", "kernel_size", 7) == 7
    with pytest.raises(ValueError, match=r"^M: expected an odd kernel_size .*, but got 4$"):
        check_odd("M", "kernel_size", 4)
    assert check_bool("M", "flag", False) is False
    with pytest.raises(TypeError, match="True or False"):
        check_bool("M", "flag", 1)


def test_check_shape_returns_sizes_and_names_the_wrong_axis():
    x = torch.zeros(2, 3, 4, 5)
    assert check_shape(x, "b c h w", c=3) == {"b": 2, "c": 3, "h": 4, "w": 5}
    with pytest.raises(ShapeError, match=r"expected c=8 in 'b c h w', but got c=3"):
        check_shape(x, "b c h w", c=8)
    with pytest.raises(ShapeError, match="has 3 axes, but the tensor has 4"):
        check_shape(x, "b c n")
    with pytest.raises(ShapeError, match="axis 'k' is not in pattern"):
        check_shape(x, "b c h w", k=1)
    assert isinstance(ShapeError("x"), ValueError)


def test_show_shape_prints_one_stable_line(capsys):
    show_shape("x", torch.zeros(2, 3, 4, 5), "b c h w", b=2)
    assert capsys.readouterr().out.split() == ["x", "b", "c", "h", "w", "b=2", "c=3", "h=4", "w=5"]
    assert describe_shape(torch.zeros(1, 7), "b n") == "b=1 n=7"
