"""What a picture of the demo world shows, from its pixels alone: the shapes on it, their colours and places.

No learned model: the background is the colour of each row's left and right edges (scenes are plain, vertical
gradients or horizontal stripes), the shapes are the connected regions that differ from it, a region's colour is
the nearest demo colour (CIELAB distance) to the median of its interior, and its shape follows from three numbers
of its outline: solidity (area over convex-hull area), extent (area over bounding-box area) and where its centre of
mass sits between its top and bottom.

    >>> from anygpt.demo.image_judge import judge
    >>> judge(picture)   # PIL image or [H, W, 3] array
    {'color': 'red', 'shape': 'star', 'position': 'center', 'area': 0.18}
"""

from __future__ import annotations

import numpy as np

from anygpt import AnyGPTError
from anygpt.demo.scenes import COLORS

EDGE = 3  # columns at each side that show the background
THRESHOLD = 60.0  # RGB distance from the background beyond which a pixel belongs to a shape
MIN_AREA = 0.004  # regions smaller than this share of the picture are specks


def objects(picture) -> list[dict]:
    """The picture's shapes, largest first: ``{"color", "shape", "position", "area", "center"}`` each, where area
    is a share of the picture and center ``(x, y)`` (its bounding box's) in [0, 1]."""
    rgb = _pixels(picture)
    height, width, _ = rgb.shape
    background = np.median(np.concatenate([rgb[:, :EDGE], rgb[:, -EDGE:]], axis=1), axis=1)  # [H, 3]
    mask = np.linalg.norm(rgb - background[:, None, :], axis=-1) > THRESHOLD
    found = []
    for region in _regions(mask):
        if region.sum() < MIN_AREA * height * width:
            continue
        ys, xs = np.nonzero(region)
        center = ((xs.min() + xs.max() + 1) / (2 * width), (ys.min() + ys.max() + 1) / (2 * height))  # box centre
        found.append({"color": _color(rgb, region), "shape": _shape(region), "position": _position(center),
                      "area": float(region.sum()) / (height * width), "center": center})
    return sorted(found, key=lambda o: -o["area"])


def judge(picture) -> dict | None:
    """The largest shape of the picture (see :func:`objects`), or None where there is none."""
    found = objects(picture)
    return found[0] if found else None


def _pixels(picture) -> np.ndarray:
    """RGB values 0-255 ``[H, W, 3]`` of a PIL image, a uint8 array, or a float array in [0, 1]."""
    rgb = np.asarray(picture.convert("RGB")) if hasattr(picture, "convert") else np.asarray(picture)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or min(rgb.shape[:2]) < 2 * EDGE + 2:
        raise AnyGPTError(f"a picture must be an RGB image or an [H, W, 3] array, got shape {rgb.shape}")
    rgb = rgb.astype(np.float64) * (255.0 if rgb.dtype.kind == "f" else 1.0)
    if not np.isfinite(rgb).all():
        raise AnyGPTError("the picture has non-finite pixels")
    return rgb


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected regions of a boolean mask."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    height, width = mask.shape
    regions = []
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label = len(regions) + 1
        labels[start] = label
        stack, members = [start], []
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        regions.append(labels == label)
    return regions


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-255) to CIELAB (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE = _lab(np.array(list(COLORS.values())))


def _color(rgb: np.ndarray, region: np.ndarray) -> str:
    inner = region.copy()
    inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    pixels = rgb[inner] if inner.sum() >= 4 else rgb[region]
    distances = np.linalg.norm(_PALETTE - _lab(np.median(pixels, axis=0)), axis=-1)
    return list(COLORS)[int(distances.argmin())]


def _shape(region: np.ndarray) -> str:
    ys, xs = np.nonzero(region)
    area = float(len(ys))
    box = float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity, extent = area / _hull_area(corners), area / box
    if solidity < 0.8:
        return "star" if solidity < 0.63 else "cross"
    if extent > 0.9:
        return "square"
    if extent > 0.66:
        return "circle"
    drop = (ys.mean() + 0.5 - ys.min()) / (ys.max() + 1 - ys.min())  # the centre of mass: 0 top, 1 bottom
    return "triangle" if drop > 0.58 else "diamond"


def _hull_area(points: np.ndarray) -> float:
    """The area of the convex hull of 2-D integer points (Andrew's monotone chain, then the shoelace formula)."""
    pts = sorted(set(map(tuple, points.tolist())))

    def half(sequence):
        chain = []
        for p in sequence:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def _position(center: tuple[float, float]) -> str:
    """The nearest of the scenes' nine places."""
    x, y = center
    col = "left" if x < 0.4 else "right" if x > 0.6 else ""
    row = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    return f"{row} {col}".strip() or "center"
