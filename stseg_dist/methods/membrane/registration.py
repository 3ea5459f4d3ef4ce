"""Chip-wide registration of the membrane stain to the nuclear stain (STCellbin, Zhang et al. 2024).

The two stains are often imaged in separate rounds, so the membrane image is offset from the
nuclear one (and from the transcripts, which share the nuclear frame). The offset is one integer
pixel shift for the whole chip: estimated once from downsampled patches sampled across the
chip, so every tile applies the same shift and tiles cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import find_peaks
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform, downscale_local_mean, radon, warp

from ...errors import InputError


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor`` x ``factor`` pixels (edge remainder dropped)."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return downscale_local_mean(image[:h, :w].astype(np.float32, copy=False), (factor, factor))


def mosaic(patches: list[np.ndarray], gap: int) -> np.ndarray:
    """Patches side by side with zero gaps wider than any lag searched.

    One correlation over the mosaic is then the sum of the per-patch correlations at small lags,
    so weak or empty patches add noise instead of votes, and one library call registers them all.
    """
    n = len(patches)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    ph = max(p.shape[0] for p in patches)
    pw = max(p.shape[1] for p in patches)
    out = np.zeros((rows * (ph + gap) + gap, cols * (pw + gap) + gap), np.float32)
    for k, p in enumerate(patches):
        r, c = divmod(k, cols)
        r0, c0 = gap + r * (ph + gap), gap + c * (pw + gap)
        out[r0 : r0 + p.shape[0], c0 : c0 + p.shape[1]] = p - p.mean()
    return out


def estimate_offset(
    reference: list[np.ndarray],
    moving: list[np.ndarray],
    factor: int,
    max_shift_px: float,
    where: str = "chip",
    normalization: str | None = None,
) -> tuple[int, int]:
    """Integer full-scale (dy, dx) that registers ``moving`` onto ``reference``.

    Inputs are matching downsampled patches. The shift is found to 1/factor of a downsampled
    pixel (skimage's upsampled DFT), i.e. about one full-scale pixel, then restored to full scale.
    Plain cross-correlation is the default: on stains with little texture, phase normalisation
    whitens the pixel noise and was measured to miss by 2 px at factor 4 where plain did not.
    Apply it with :func:`apply_offset`.
    """
    pairs = [
        (a, b)
        for a, b in zip(reference, moving, strict=False)
        if a.size and a.std() > 0 and b.std() > 0
    ]
    if not pairs:
        raise InputError(
            f"{where}: cannot register the membrane stain: no sampled region has signal in both "
            "stains"
        )
    gap = int(math.ceil(max_shift_px / factor)) + 2
    ref = mosaic([a for a, _ in pairs], gap)
    mov = mosaic([b for _, b in pairs], gap)
    shift, _, _ = phase_cross_correlation(
        ref, mov, upsample_factor=factor, normalization=normalization
    )
    dy, dx = (int(round(float(s) * factor)) for s in shift)
    if max(abs(dy), abs(dx)) > max_shift_px:
        raise InputError(
            f"{where}: the membrane stain is offset by ({dy}, {dx}) px from the nuclear stain, "
            "more than "
            f"cells.membrane.max_shift_um allows ({max_shift_px:g} px); raise it if the offset is "
            "real"
        )
    return dy, dx


def apply_offset(image: np.ndarray, offset: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """``out[r, c] = image[r - dy, c - dx]``; pixels shifted in from outside take ``fill``."""
    dy, dx = offset
    if dy == 0 and dx == 0:
        return image
    h, w = image.shape
    out = np.full(image.shape, fill, dtype=image.dtype)
    src_r = slice(max(0, -dy), min(h, h - dy))
    src_c = slice(max(0, -dx), min(w, w - dx))
    dst_r = slice(max(0, dy), min(h, h + dy))
    dst_c = slice(max(0, dx), min(w, w + dx))
    if src_r.start < src_r.stop and src_c.start < src_c.stop:
        out[dst_r, dst_c] = image[src_r, src_c]
    return out


def sample_regions(
    shape: tuple[int, int], size: int, max_regions: int
) -> list[tuple[int, int, int, int]]:
    """Up to ``max_regions`` squares of ``size`` px spread evenly over the chip, as
    (r0, r1, c0, c1).

    They are anchored to the chip, not to tiles, so the offset (and the membrane threshold read
    from the same regions) does not change with the tile size.
    """
    h, w = shape
    k = max(1, int(math.isqrt(max_regions)))
    out = []
    for r0 in np.unique(
        np.linspace(0, max(0, h - size), min(k, math.ceil(h / size))).round().astype(int)
    ):
        for c0 in np.unique(
            np.linspace(0, max(0, w - size), min(k, math.ceil(w / size))).round().astype(int)
        ):
            out.append((int(r0), int(min(h, r0 + size)), int(c0), int(min(w, c0 + size))))
    return out


# -- similarity registration of the stain to the expression map through the chip's track lines ----
#
# Stereo-seq chips carry track lines: a periodic grid of lines with no DNB, so the expression map
# has no transcripts on them and the stain shows them as dark lines (STCellbin registers with
# them). The grid's gaps follow a template that is not a palindrome and differs between x and y,
# so the lines alone fix flip, quarter turns, scale and offset. Steps, on both images downsampled
# alike: the stain's grid angle (modulo 90°) from its Radon transform; the stain turned square to
# the pixel axes; line positions per axis from the profiles (dark lines as peaks); per axis, the
# 1-D similarity (scale, sign, shift) that lands most stain lines on expression lines, rows paired
# with rows or (a quarter turn) with columns; the pairing and signs with the most lines on both
# axes at one scale win, refit by least squares. Its margin over the best other orientation is the
# confidence.


@dataclass
class TrackFit:
    """A registration by track lines: ``matrix`` maps full-scale transcript-frame pixels
    (x = column, y = row, 1) to stain pixels; the rest says how well it is supported.
    """

    matrix: np.ndarray
    lines: int  # track lines matched, both axes
    lines_found: int  # track lines found in the stain
    runner_up: int  # lines matched by the best other orientation (flip / quarter turn)
    residual_px: float  # RMS distance of matched lines, full-scale pixels
    angle_deg: float  # grid angle of the stain, modulo 90°
    scale: float
    orientation: str


def dark_lines(image: np.ndarray, width_px: float) -> np.ndarray:
    """Dark thin lines as positive values: the local background minus the image, after capping
    the image at its median so bright structure (membranes, dense spots) cannot outweigh them.
    """
    img = image.astype(np.float64)
    med = float(np.nanmedian(img)) if np.isfinite(img).any() else 0.0
    if med <= np.nanmin(img, initial=np.inf):  # sparse counts: most bins empty
        med = float(np.nanmean(img))
    img = np.minimum(np.nan_to_num(img, nan=med), med)
    out = ndi.gaussian_filter(img, max(4.0 * width_px, 2.0)) - ndi.gaussian_filter(
        img, max(width_px / 2, 0.5)
    )
    return out / (out.std() or 1.0)


def grid_angle(lines: np.ndarray) -> float:
    """Angle (degrees, in [-45, 45)) that turns the line grid square to the pixel axes: the
    Radon projections at theta and theta + 90° are most peaked there.
    """
    r = min(lines.shape) / 2 - 1
    yy, xx = np.mgrid[: lines.shape[0], : lines.shape[1]]
    disc = np.where(
        (yy - (lines.shape[0] - 1) / 2) ** 2 + (xx - (lines.shape[1] - 1) / 2) ** 2 <= r * r,
        lines,
        0,
    )

    def best(thetas):
        sino = radon(disc, theta=np.concatenate([thetas, thetas + 90]), circle=True)
        score = sino.var(axis=0)
        return thetas[np.argmax(score[: len(thetas)] + score[len(thetas) :])]

    coarse = best(np.arange(0.0, 90.0, 0.5))
    fine = best(coarse + np.arange(-0.5, 0.5, 0.02))
    return float((fine + 45.0) % 90.0 - 45.0)


def square_up(image: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned by ``angle_deg`` about its centre (NaN beyond it), and the 3x3 matrix from
    the turned image's (x, y) to the original's.
    """
    h, w = image.shape
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    m = c @ rot @ np.linalg.inv(c)
    out = warp(
        image.astype(np.float64),
        AffineTransform(matrix=m),
        order=1,
        cval=np.nan,
        preserve_range=True,
    )
    return out, m


def line_positions(lines: np.ndarray, axis: int, min_gap_px: float) -> np.ndarray:
    """Sub-pixel positions of the lines across ``axis`` (0: rows, i.e. horizontal lines), from the
    profile of mean line strength; a peak must stand out of the profile's noise.
    """
    valid = np.isfinite(lines)
    n = valid.sum(axis=1 - axis)
    prof = np.where(n > 0, np.nansum(lines, axis=1 - axis) / np.maximum(n, 1), 0.0)
    prof = prof - ndi.median_filter(prof, size=max(3, int(4 * min_gap_px) | 1), mode="nearest")
    noise = 1.4826 * np.median(np.abs(prof - np.median(prof))) + 1e-12
    peaks, _ = find_peaks(prof, height=3 * noise, distance=max(1, int(min_gap_px)))
    peaks = peaks[(peaks > 0) & (peaks < len(prof) - 1)]
    a, b, c = prof[peaks - 1], prof[peaks], prof[peaks + 1]
    den = a - 2 * b + c
    return peaks + np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1), 0.0)


def _inliers(u: np.ndarray, pred: np.ndarray, tol: float) -> np.ndarray:
    """Per hypothesis (rows of ``pred``), how many ``u`` lie within ``tol`` of a predicted line."""
    d = np.abs(u[None, :, None] - pred[:, None, :]).min(axis=2)
    return (d < tol).sum(axis=1)


def hypotheses(
    u: np.ndarray, v: np.ndarray, sign: float, scales: tuple[float, float]
) -> np.ndarray:
    """Candidate (s, t) with ``u ≈ s * v + t``, one per pair of neighbouring lines in each image
    (``sign`` -1: the stain runs the other way, a flip), within the scale range.
    """
    if len(u) < 2 or len(v) < 2:
        return np.zeros((0, 2))
    du, dv = np.diff(u), np.diff(v)
    s = sign * du[:, None] / dv[None, :]
    anchor = v[:-1] if sign > 0 else v[1:]
    t = u[:-1, None] - s * anchor[None, :]
    ok = (np.abs(s) >= scales[0]) & (np.abs(s) <= scales[1])
    return np.stack([s[ok], t[ok]], axis=1)


def best_shift(u: np.ndarray, v: np.ndarray, s: float, tol: float) -> tuple[int, float]:
    """With the scale known, the shift landing most ``u`` on ``s * v + t`` (ties: smallest |t|)."""
    if not len(u) or not len(v):
        return 0, 0.0
    t = (u[:, None] - s * v[None, :]).ravel()
    k = _inliers(u, s * v[None, :] + t[:, None], tol)
    best = np.flatnonzero(k == k.max())
    j = best[np.argmin(np.abs(t[best]))]
    return int(k[j]), float(t[j])


def match_lines(
    stain: tuple[np.ndarray, np.ndarray],
    expr: tuple[np.ndarray, np.ndarray],
    scales: tuple[float, float],
    tol: float,
) -> list[tuple[int, str, float, tuple]]:
    """Every orientation (stain rows with expression rows or, a quarter turn, with columns; either
    sign per axis), with its best common scale and shifts: (lines matched, name, scale, (pairing,
    signs, shifts)), best first.
    """
    out = []
    for swap in (False, True):
        pairs = (
            ((stain[0], expr[1]), (stain[1], expr[0]))
            if swap
            else ((stain[0], expr[0]), (stain[1], expr[1]))
        )
        for sa in (1.0, -1.0):
            for sb in (1.0, -1.0):
                best = (-1, 1.0, (0.0, 0.0))
                (ua, va), (ub, vb) = pairs
                for s, t in hypotheses(ua, va, sa, scales):
                    ka = int(_inliers(ua, (s * va + t)[None, :], tol)[0])
                    kb, tb = best_shift(ub, vb, sb * abs(s), tol)
                    if ka + kb > best[0]:
                        best = (ka + kb, abs(s), (t, tb))
                sign = {1.0: "+", -1.0: "-"}
                name = f"{'quarter turn' if swap else 'upright'}, rows {sign[sa]}, cols {sign[sb]}"
                out.append((best[0], name, best[1], (swap, (sa, sb), best[2])))
    return sorted(out, key=lambda o: -o[0])


def _refit(
    stain, expr, swap: bool, signs, s: float, shifts, tol: float, rounds: int = 3, final_tol=None
):
    """Least-squares scale (shared) and shifts (per axis) over the matched lines; RMS residual."""
    pairs = (
        ((stain[0], expr[1]), (stain[1], expr[0]))
        if swap
        else ((stain[0], expr[0]), (stain[1], expr[1]))
    )
    t = list(shifts)
    n = 0
    rms = 0.0
    for _ in range(rounds):
        rows, rhs = [], []
        for axis, ((u, v), sign) in enumerate(zip(pairs, signs, strict=False)):
            if not len(u) or not len(v):
                continue
            pred = sign * s * v + t[axis]
            j = np.abs(u[:, None] - pred[None, :]).argmin(axis=1)
            ok = np.abs(u - pred[j]) < tol
            for ui, vj in zip(u[ok], v[j[ok]], strict=True):
                rows.append([sign * vj, axis == 0, axis == 1])
                rhs.append(ui)
        a, b = np.asarray(rows, np.float64), np.asarray(rhs, np.float64)
        if len(b) < 3 or not a[:, 1].any() or not a[:, 2].any():
            break
        (s, t[0], t[1]), *_ = np.linalg.lstsq(a, b, rcond=None)
        err = np.abs(a @ np.array([s, t[0], t[1]]) - b)
        n, rms = int((err < (final_tol or tol)).sum()), float(np.sqrt(np.mean(err**2)))
    return float(s), (float(t[0]), float(t[1])), n, rms


def register_track_lines(
    expression: np.ndarray,
    stain: np.ndarray,
    factor: int,
    width_px: float,
    where: str,
    scales: tuple[float, float] = (0.8, 1.25),
    min_margin: int = 2,
    min_lines: int = 4,
) -> TrackFit:
    """The similarity (flip, rotation, scale, offset) from the expression map to the stain.

    ``expression`` (transcript counts) and ``stain`` are the chip downsampled by ``factor`` alike
    (bin i covers full-scale pixels ``factor * i`` onwards); ``width_px`` is a track line's width
    in those bins. Raises :class:`InputError` naming ``where`` when the lines do not fix one
    orientation by at least ``min_margin`` lines, or fewer than ``min_lines`` match.
    """
    w = max(width_px, 0.5)
    le, ls = dark_lines(expression, w), dark_lines(stain, w)
    gap, tol = max(3.0, 4 * w), max(1.0, 1.5 * w)
    angle = grid_angle(ls)
    turned, back, angle_used = None, None, angle
    sharpest = -np.inf
    for a in (angle, -angle) if angle else (angle,):  # the Radon angle's sign convention, checked
        img, m = square_up(ls, a)
        sharp = sum(float(np.nanvar(np.nanmean(img, axis=k))) for k in (0, 1))
        if sharp > sharpest:
            sharpest, turned, back, angle_used = sharp, img, m, a
    stain_pos = (line_positions(turned, 0, gap), line_positions(turned, 1, gap))
    expr_pos = (line_positions(le, 0, gap), line_positions(le, 1, gap))
    # each orientation refit on its matched lines, then judged by the lines within half a bin
    fits = []
    for _k, name, s, (swap, signs, shifts) in match_lines(stain_pos, expr_pos, scales, tol):
        s, shifts, k, rms = _refit(stain_pos, expr_pos, swap, signs, s, shifts, tol, final_tol=0.5)
        fits.append((k, -rms, name, s, swap, signs, shifts, rms))
    fits.sort(key=lambda f: f[:2], reverse=True)
    (k, _, name, s, swap, signs, (ta, tb), rms), runner_up = fits[0], fits[1][0]
    found = len(stain_pos[0]) + len(stain_pos[1])
    if k < min_lines or k - runner_up < min_margin:
        raise InputError(
            f"{where}: cannot register the membrane stain to the expression map by track lines: "
            f"{len(expr_pos[0]) + len(expr_pos[1])} lines found in the expression map, {found} in "
            "the stain; "
            f"the best orientation ({name}) matches {k}, the next best {runner_up} (need at least "
            f"{min_lines} and a margin of cells.membrane.register_min_margin = {min_margin}); does "
            "the chip "
            "have track lines, and is cells.membrane.track_line_um their width?"
        )
    sa, sb = signs
    coarse = (
        np.array([[0, sb * s, tb], [sa * s, 0, ta], [0, 0, 1]])
        if swap
        else np.array([[sb * s, 0, tb], [0, sa * s, ta], [0, 0, 1]])
    )
    c = np.array(
        [[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1]], np.float64
    )
    full = c @ back @ coarse @ np.linalg.inv(c)
    return TrackFit(full, int(k), found, int(runner_up), rms * factor, float(angle_used), s, name)


def read_through(
    read, shape_yx: tuple[int, int], matrix: np.ndarray, window: tuple[int, int, int, int]
) -> np.ndarray:
    """The stain over ``window`` (r0, r1, c0, c1) of the transcripts' frame: ``out[r, c]`` is the
    stain at ``matrix @ (c, r, 1)``, bilinear, NaN where that falls off the stain.

    ``read(rows, cols)`` returns a region of the stain (shape ``shape_yx``); only the box the
    window maps into is read. Sample positions and weights are computed from global pixel indices
    alone, so a pixel gets the same value from every tile that holds it (tile invariance is exact).
    """
    h, w = shape_yx
    r0, r1, c0, c1 = window
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    m = np.asarray(matrix, np.float64)
    x = m[0, 0] * cc + m[0, 1] * rr + m[0, 2]
    y = m[1, 0] * cc + m[1, 1] * rr + m[1, 2]
    out = np.full(rr.shape, np.nan, np.float32)
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    if not inside.any() or h < 2 or w < 2:
        return out
    x, y = x[inside], y[inside]
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = x - x0, y - y0
    ya, yb, xa, xb = int(y0.min()), int(y0.max()) + 2, int(x0.min()), int(x0.max()) + 2
    img = np.asarray(read(slice(ya, yb), slice(xa, xb)), np.float64)
    i, j = y0 - ya, x0 - xa
    top = (1 - fx) * img[i, j] + fx * img[i, j + 1]
    bottom = (1 - fx) * img[i + 1, j] + fx * img[i + 1, j + 1]
    out[inside] = (1 - fy) * top + fy * bottom
    return out
