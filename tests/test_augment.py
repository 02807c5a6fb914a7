"""Label-preserving augmentation: colours and left/right order survive it on rendered demo
scenes, nothing leaves the frame, and its draws depend only on (seed, epoch, item)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenfocus.augment import Augment, border_colour
from tokenfocus.batches import TokenFocusCollator
from tokenfocus.config import TrainingConfig
from tokenfocus.demo.render import render_scene
from tokenfocus.demo.scene import COLORS, Scene, SceneObject

PALETTE = {name: np.array(rgb, float) for name, rgb in COLORS.items()}
WIDE_SHIFT = Augment(shift=0.3)


def colour_pixels(image: Image.Image, name: str, tol: float = 90.0) -> np.ndarray:
    """(y, x) of the pixels nearest to palette colour ``name`` and within ``tol`` of it."""
    a = np.asarray(image, float)
    dist = {c: np.linalg.norm(a - rgb, axis=-1) for c, rgb in PALETTE.items()}
    nearest = np.argmin(np.stack(list(dist.values())), axis=0)
    mask = (nearest == list(PALETTE).index(name)) & (dist[name] < tol)
    return np.argwhere(mask)


@pytest.mark.parametrize("background, colours, layout", [
    ("snow", ("red", "blue"), "row"), ("room", ("yellow", "purple"), "row"), ("snow", ("green", "pink"), "column"),
])
def test_colours_order_and_objects_survive(background, colours, layout):
    scene = Scene(background, [SceneObject("circle", colours[0]), SceneObject("square", colours[1], count=2)],
                  layout=layout)
    image = render_scene(scene, size=112)
    axis = 1 if layout == "row" else 0          # x for a row, y for a column
    before = {c: colour_pixels(image, c) for c in colours}
    assert all(len(p) > 30 for p in before.values())
    for seed in range(12):
        for aug in (Augment(), WIDE_SHIFT):   # the defaults, and a wider move
            out = aug(image, np.random.default_rng(seed))
            assert out.size == image.size and out.mode == "RGB"
            after = {c: colour_pixels(out, c) for c in colours}
            for c in colours:   # still read as the same colour, and not cut out of the frame
                shrunk = (1 - aug.shift) ** 2 * len(before[c])        # the least area a shift leaves
                assert len(after[c]) >= 0.6 * shrunk, (seed, c, len(after[c]), len(before[c]))
            first, second = (after[c][:, axis].mean() for c in colours)
            assert first < second, (seed, layout)   # left of / above kept


def test_shift_keeps_the_whole_image_inside_the_frame():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))          # a red square in each corner
    image.paste((255, 0, 0), (90, 90, 100, 100))
    for seed in range(20):
        out = Augment(brightness=0, contrast=0, blur=0, shift=0.3)(image, np.random.default_rng(seed))
        red = colour_pixels(out, "red")
        assert len(red) >= 2 * 0.7 ** 2 * 100 * 0.9   # both corners still there, shrunk at most 0.7
        assert red[:, 0].min() < 50 < red[:, 0].max() and red[:, 1].min() < 50 < red[:, 1].max()


def test_same_draws_same_image_and_zero_strength_is_identity():
    image = render_scene(Scene("beach", [SceneObject("star", "orange")]), size=64)
    a = Augment()(image, np.random.default_rng([1, 2, 3]))
    b = Augment()(image, np.random.default_rng([1, 2, 3]))
    c = Augment()(image, np.random.default_rng([1, 2, 4]))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    off = Augment(0, 0, 0, 0)(image, np.random.default_rng(0))
    assert np.array_equal(np.asarray(off), np.asarray(image))
    assert border_colour(Image.new("RGB", (8, 8), (10, 20, 30))) == (10, 20, 30)


def test_strengths_are_checked():
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=0.8)


def test_collator_augments_training_images_only_by_seed_epoch_item(tmp_path):
    render_scene(Scene("forest", [SceneObject("heart", "red")]), size=64).save(tmp_path / "a.png")
    on = TrainingConfig(augment=True)

    def image(train, epoch=0, item=0, tcfg=on):
        col = TokenFocusCollator(None, Path(tmp_path), tcfg, train=train)
        col.epoch = epoch
        return np.asarray(col._image("a.png", item))

    raw = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert np.array_equal(image(False), raw)                          # evaluation: never
    assert np.array_equal(image(True, tcfg=TrainingConfig()), raw)    # off by default
    assert np.array_equal(image(True, 1, 5), image(True, 1, 5))       # same (seed, epoch, item)
    assert not np.array_equal(image(True, 1, 5), image(True, 2, 5))
    assert not np.array_equal(image(True, 1, 5), image(True, 1, 6))
