"""Drawing an explanation: the maps upsampled over the photos with a perceptual colour map (inferno), query and
result side by side, with the score, the method and an "approximate" label where it applies."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import ConfigError, ExplainError
from ...sources.images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .maps import Explanation

__all__ = ["colorize", "render_explanation", "explanation_png"]


# Matplotlib's "inferno" (perceptually uniform, readable in grey), sampled at 17 points and interpolated.
_INFERNO = np.array([
    (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110), (138, 34, 106),
    (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29), (249, 142, 9), (252, 172, 17),
    (249, 203, 53), (242, 234, 105), (252, 255, 164),
], dtype=np.float32)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO)), _INFERNO[:, c])
                 for c in range(3)], axis=1).astype(np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB float32 colours of the inferno colour map."""
    idx = np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255), 0, 255).astype(np.intp)
    return _LUT[idx]


def _upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an ``(H, W)`` map to ``size`` (width, height); cell centres stay in place."""
    img = Image.fromarray(np.ascontiguousarray(grid_map, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _overlay(photo: Image.Image, grid_map: np.ndarray, vmax: float, alpha: float) -> Image.Image:
    values = _upsample(grid_map, photo.size)
    v = np.clip(values / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(values)
    rgb = np.asarray(photo, dtype=np.float32)
    out = (1.0 - alpha) * rgb + alpha * colorize(v)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _panel_photo(source: ImageSource, height: int, max_pixels: int) -> Image.Image:
    img = load_image(source, max_pixels=max_pixels, draft_size=None if isinstance(source, Image.Image)
                     else (height, height))
    w = max(1, min(2 * height, round(img.width * height / img.height)))
    return img.resize((w, height), Image.Resampling.BILINEAR, reducing_gap=2.0)


def _caption(label: str, item_id: int | None, path: str | None) -> str:
    parts = [label]
    if item_id is not None:
        parts.append(f"id {item_id}")
    if path is not None:
        parts.append(Path(path).name)
    return " · ".join(parts)


def render_explanation(explanation: Explanation, *, height: int = 320, alpha: float = 0.55,
                       query_image: ImageSource | None = None, result_image: ImageSource | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Draw the query and the result side by side, each with its map as a colour overlay.

    Exact maps share one colour scale (both are contributions to the same
    score); gradient maps are scaled to their own positive maximum, and the
    picture says in orange that they are approximate.

    Args:
        explanation: What to draw.
        height: Height of each photo, in pixels.
        alpha: Opacity of the colour overlay (0 to 1).
        query_image: The query image, if not the explanation's own source.
        result_image: Likewise for the result.
        max_pixels: Decompression-bomb guard.

    Returns:
        An RGB image: a header line with the score and the method, the two
        overlays, their captions and a colour bar.
    """
    if not 16 <= height <= 2048:
        raise ConfigError(f"height must be 16 to 2048 pixels, got {height}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    e = explanation
    q_src = query_image if query_image is not None else e.query_source
    r_src = result_image if result_image is not None else e.result_source
    if q_src is None or r_src is None:
        raise ExplainError("This explanation holds no images to draw; pass query_image and result_image")
    q_photo = _panel_photo(q_src, height, max_pixels)
    r_photo = _panel_photo(r_src, height, max_pixels)
    if e.approximate:
        vq = float(max(e.query_map.max(), 0.0))
        vr = float(max(e.result_map.max(), 0.0))
    else:
        vq = vr = float(max(e.query_map.max(), e.result_map.max(), 0.0))
    panels = [_overlay(q_photo, e.query_map, vq, alpha), _overlay(r_photo, e.result_map, vr, alpha)]

    pad, gap, fs = 10, 12, 14
    font, small = _font(fs), _font(fs - 2)
    head = 2 * (fs + 6) + pad
    foot = (fs + 8) + 34
    width = max(pad * 2 + sum(p.width for p in panels) + gap, 480)
    canvas = Image.new("RGB", (width, head + height + foot), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    weights = e.weights if e.weights in ("imagenet", "random") else Path(e.weights).name
    draw.text((pad, pad), f"cosine similarity {e.score:.4f}   ·   {e.method}   ·   {e.model} ({weights})",
              fill=(20, 20, 20), font=font)
    if e.approximate:
        draw.text((pad, pad + fs + 6), "APPROXIMATE: a gradient (Grad-CAM style) map, not an exact decomposition "
                  "of the score", fill=(200, 80, 0), font=font)
    else:
        draw.text((pad, pad + fs + 6), f"exact: each map's cells sum to the score (query {e.query_map.sum():.4f}, "
                  f"result {e.result_map.sum():.4f}); grid {e.grid[0]}x{e.grid[1]}", fill=(60, 60, 60), font=font)
    x = pad
    captions = [_caption("query", e.query_id, e.query_path), _caption("result", e.result_id, e.result_path)]
    for panel, text in zip(panels, captions):
        canvas.paste(panel, (x, head))
        draw.text((x, head + height + 4), text, fill=(40, 40, 40), font=small)
        x += panel.width + gap

    # Colour bar: low to high, with the scale's ends.
    bar_w, bar_h, by = min(256, width - 2 * pad - 120), 10, head + height + fs + 10
    bar = colorize(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (bar_h, 1))).astype(np.uint8)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (pad, by))
    if e.approximate:
        label = "0 … largest positive Grad-CAM value (each image its own scale)"
    else:
        label = f"0 … {max(vq, vr):.4g} of the score per cell"
    draw.text((pad + bar_w + 8, by - 2), label, fill=(60, 60, 60), font=small)
    return canvas


def explanation_png(explanation: Explanation, *, height: int = 320, alpha: float = 0.55,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """:func:`render_explanation` as PNG bytes."""
    img = render_explanation(explanation, height=height, alpha=alpha, max_pixels=max_pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
