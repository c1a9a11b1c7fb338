"""Batch-wise device augmentation against the official torchvision transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms as tv
from torchvision.transforms import functional as tvf

from drl_tune.data import transforms as T

CPU = torch.device("cpu")


def batch(b: int = 4, t: int = 2, c: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, t, c, size, size), dtype=np.uint8)


def test_evaluation_is_totensor_plus_imagenet_normalize():
    x = batch()
    out = T.prepare_input("frames", x, CPU, augment=False, generator=torch.Generator())
    official = tv.Compose([tv.ToTensor(), tv.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    for i in range(4):
        for t in range(2):
            expected = official(x[i, t].transpose(1, 2, 0))  # HWC uint8, as a PIL image would give
            torch.testing.assert_close(out[i, t], expected, atol=1e-5, rtol=1e-5)


def test_flow_and_spectrogram_scaling():
    flow = np.full((1, 1, 2, 8, 8), 128, np.uint8)
    flow[..., 0, :, :] = 255
    out = T.prepare_input("flow", flow, CPU, augment=False, generator=torch.Generator())
    assert torch.allclose(out[0, 0, 0], torch.tensor(1.0)) and out[0, 0, 1].abs().max() < 0.01
    spec = np.ones((2, 5, 4), np.float16)
    assert T.prepare_input("spectrogram", spec, CPU, augment=True, generator=torch.Generator()).dtype == torch.float32


def test_crop_boxes_follow_torchvision_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    boxes = T._crop_boxes(20000, 224, 224, g)
    x, y, w, h = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 224).all() and (y + h <= 224).all() and (w > 0).all()
    area = (w * h).float() / 224**2
    torch.manual_seed(0)
    ref, image = [], torch.zeros(3, 224, 224)
    for _ in range(4000):
        _, _, rh, rw = tv.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        ref.append(rh * rw / 224**2)
    ref = torch.tensor(ref)
    assert abs(area.mean() - ref.mean()) < 0.02 and abs(area.std() - ref.std()) < 0.02
    assert abs(torch.log(w / h).float().mean()) < 0.01  # ratios symmetric in log space
    assert area.min() >= 0.075 and area.max() <= 1.0


def test_crop_boxes_use_the_source_aspect():
    g = torch.Generator().manual_seed(1)
    boxes = T._crop_boxes(20000, 224, 224, g, aspect=480 / 360)
    assert (boxes[:, 0] + boxes[:, 2] <= 224).all()
    # a crop with ratio r in a 4:3 source is r·3/4 wide in the squashed stored square
    ratio = (boxes[:, 2] / boxes[:, 3]).float().log().mean().exp()
    assert ratio == pytest.approx(0.75, abs=0.03)


def test_augmented_crop_equals_torchvision_resized_crop_of_that_box():
    x = batch(b=3, t=2)
    g = torch.Generator().manual_seed(5)
    out = T.prepare_input("frames", x, CPU, augment=True, generator=g)
    g = torch.Generator().manual_seed(5)
    boxes = T._crop_boxes(6, 32, 32, g)
    flips = torch.rand(6, generator=g) < 0.5
    frames = torch.from_numpy(x).reshape(6, 3, 32, 32)
    for i in range(6):
        bx, by, bw, bh = boxes[i].tolist()
        ref = tvf.resized_crop(frames[i], by, bx, bh, bw, [32, 32], antialias=True)
        if flips[i]:
            ref = tvf.hflip(ref)
        ref = tvf.normalize(ref.float() / 255, T.IMAGENET_MEAN, T.IMAGENET_STD)
        torch.testing.assert_close(out.reshape(6, 3, 32, 32)[i], ref, atol=0.03, rtol=0)  # uint8 rounding


def test_every_frame_gets_its_own_crop_as_the_official_per_frame_transform():
    x = np.repeat(batch(b=1, t=1, size=64), 8, axis=1)  # one clip, 8 identical frames
    out = T.prepare_input("frames", x, CPU, augment=True, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(out[0, t].flatten()[:50].tolist()) for t in range(8)}
    assert len(distinct) > 4


def test_augmentation_is_deterministic_in_the_generator_and_shapes_hold():
    x = batch(b=5, t=3)
    a = T.prepare_input("frames", x, CPU, augment=True, generator=torch.Generator().manual_seed(3))
    b = T.prepare_input("frames", x, CPU, augment=True, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_flipped_flow_negates_horizontal_motion_and_policies():
    flow = np.zeros((16, 1, 2, 8, 8), np.uint8)
    flow[:, :, 0] = 200  # moving right
    flow[:, :, 1] = 90
    flow[:, :, :, :, 0] = 128  # a marker column on the left edge
    out = T.prepare_input("flow", flow, CPU, augment=True, generator=torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, :, -1].mean(1).abs() < 0.01  # the marker moved to the right edge
    assert 0 < flipped.sum() < 16
    u = out[:, 0, 0, 2:6, 2:6].mean((1, 2))
    assert torch.allclose(u[flipped], torch.tensor(-(200 * 2 / 255 - 1)), atol=1e-5)
    assert torch.allclose(u[~flipped], torch.tensor(200 * 2 / 255 - 1), atol=1e-5)
    assert torch.allclose(out[:, 0, 1, 2:6, 2:6], torch.tensor(90 * 2 / 255 - 1), atol=1e-5)  # v unchanged
    # policy "none" = evaluation
    none = T.prepare_input("frames", batch(), CPU, augment=True, generator=torch.Generator(), policy="none")
    plain = T.prepare_input("frames", batch(), CPU, augment=False, generator=torch.Generator())
    torch.testing.assert_close(none, plain)
    with pytest.raises(ValueError, match="policy"):
        T.prepare_input("frames", batch(), CPU, augment=True, generator=torch.Generator(), policy="mixup")


def test_cpu_path_agrees_with_the_accelerator_roi_align_path():
    rng = np.random.default_rng(0)
    smooth = torch.from_numpy(rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8))
    frames = torch.nn.functional.interpolate(smooth.float(), size=(64, 64), mode="bilinear").round().byte()
    g = torch.Generator().manual_seed(0)
    boxes = T._crop_boxes(8, 64, 64, g)
    flips = torch.rand(8, generator=g) < 0.5
    for kind, x in (("frames", frames), ("flow", frames[:, :2].contiguous())):
        scale, bias = T._normaliser(kind, CPU)
        cpu = T._augment_cpu(x, boxes, flips, kind, scale, bias)
        dev = T._augment_device(x, boxes, flips, kind, scale, bias)
        assert (cpu - dev).abs().mean() < 0.02  # same boxes, same bilinear rule; borders and rounding differ


@pytest.mark.parametrize("size", [32, 64])  # below and at the per-frame CPU path's threshold
@pytest.mark.parametrize("augment", [True, False])
def test_reused_buffers_give_the_same_batches_and_the_same_memory(size, augment):
    buffers = T.BatchBuffers()
    first, second = batch(b=3, t=2, size=size), batch(b=3, t=2, size=size)[::-1].copy()
    outs = []
    for x in (first, second):
        fresh = T.prepare_input("frames", x, CPU, augment=augment, generator=torch.Generator().manual_seed(1))
        reused = T.prepare_input("frames", x, CPU, augment=augment, generator=torch.Generator().manual_seed(1),
                                 buffers=buffers, key="visual")
        torch.testing.assert_close(reused, fresh, atol=0, rtol=0)
        outs.append(reused.data_ptr())
    assert outs[0] == outs[1]  # the second batch was written where the first was
    smaller = T.prepare_input("frames", first[:1], CPU, augment=augment, generator=torch.Generator(),
                              buffers=buffers, key="visual")
    assert smaller.shape == (1, 2, 3, size, size) and smaller.data_ptr() == outs[0]


def test_spectrograms_into_reused_buffers_are_exact_float32():
    buffers = T.BatchBuffers()
    spec = np.random.default_rng(0).standard_normal((4, 10, 8)).astype(np.float16)
    out = T.prepare_input("spectrogram", spec, CPU, augment=True, generator=torch.Generator(),
                          buffers=buffers, key="audio")
    assert out.dtype == torch.float32 and np.array_equal(out.numpy(), spec.astype(np.float32))
    again = T.prepare_input("spectrogram", spec[:2], CPU, augment=True, generator=torch.Generator(),
                            buffers=buffers, key="audio")
    assert again.data_ptr() == out.data_ptr() and again.shape == (2, 10, 8)
