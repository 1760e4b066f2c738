"""Activation-level projector audit: per-token drift ΔE = P1(v1) − P0(v0) on the data, and per-sample scores.

Why (ProjLens, research/projlens.md §4, §6, §8; drift probe, research/detector-probe.md B):
- ΔE is taken through each model's own vision tower, so a backdoor learned in a trainable tower counts.
- ProjLens found the per-image ΔE near rank 1 on clean and poisoned images alike (top-1 energy 55–80%), all
  images drifting along one shared direction, with a token's coordinate on it growing linearly with the norm
  of the base projector's output ‖E0_t‖ (r ≈ 0.97). Those are descriptions of the fine-tune, not detectors:
  they are reported here (energy, alignment, norm law) to see whether flagged samples break the pattern.
- What separated poisoned samples in the probe is the drift *magnitude*: max_t ‖ΔE_t‖ for patch triggers
  (AUROC 0.89–0.97), mean_t ‖ΔE_t‖ for global ones (SIG 0.94), and max drift relative to a token norm
  (0.94–0.98 on BadNet), silent on no-relabel controls. Projection on the mean drift direction failed
  (0.36–0.50): that direction is the clean fine-tuning drift. All are computed here as (N,) arrays, higher =
  more suspicious, NaN for samples without an image, ready for `FeatureSet.extra_scores`.
- On the embedded world (work/world, BadNet 10%, default fine-tune) the raw magnitudes were near chance
  (AUROC max 0.54, mean 0.62) while the norm-divided ones ranked well (max_t ‖ΔE_t‖/‖E0_t‖ 0.91, mean 0.88):
  there the drift follows the norm law (‖ΔE_t‖ against ‖E0_t‖: r = 0.90), so high-norm tokens dominate the
  raw scores and hide the trigger token. Dividing by ‖E0_t‖ is ProjLens §8.2(c)'s correction; whether the
  norm law holds is visible without labels in the report's `norm_law` fit.
- The logit lens reads the shared direction through the LM head (ProjLens §6 skips the final norm; both are
  given, with both signs since an SVD sign is arbitrary): a fixed-target backdoor may name its target there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import linregress
from torch import nn
from tqdm.auto import tqdm

from poisonguard.audit.projector import apply_projector, image_inputs, projector_features
from poisonguard.train.batching import image_token_count
from poisonguard.data.records import Sample
from poisonguard.detect.features import FeatureSet

DRIFT_SCORES = (
    "drift_max",
    "drift_mean",
    "drift_max_rel",
    "drift_mean_rel",
    "drift_max_rel_input",
    "drift_proj",
)
_EPS = 1e-12


@dataclass
class DriftCollection:
    """What one pass over the data keeps (N samples, D = LM hidden size, R kept token rows).

    per_token_max / per_token_mean: (N,) max_t and mean_t of ‖ΔE_t‖; max_rel / mean_rel: (N,) max_t and
    mean_t of ‖ΔE_t‖ / ‖E0_t‖ (the norm law divided out);
    max_rel_input: (N,) max_t ‖ΔE_t‖ / ‖v1_t‖ (the probe's normalisation by the projector input);
    projector_only_mean: (N,) mean_t ‖P1(v0_t) − P0(v0_t)‖ (the projector's share, the tower held at base);
    mean_delta: (N, D) mean_t ΔE_t; top_dir: (N, D) top right singular vector of the sample's ΔE (sign free,
    NaN when ΔE is zero);
    energy: (N, K) cumulative energy share of the top-1..K singular components of the sample's ΔE;
    image_r: (N,) ProjLens's own norm-law statistic (research/projlens.md §4.3): per sample, Pearson r between
    each token's coordinate on the sample's top drift direction (sign fixed so the tokens drift positively
    on average) and ‖E0_t‖; NaN with < 3 tokens or a constant drift or norm;
    gram: (D, D) Σ_t ΔE_tᵀ ΔE_t over every token; fit_delta (R, D), fit_base_norm (R,), fit_owner (R,):
    token rows kept for the norm law. Samples without an image have NaN rows and 0 tokens.
    """

    ids: np.ndarray
    n_tokens: np.ndarray
    per_token_max: np.ndarray
    per_token_mean: np.ndarray
    max_rel: np.ndarray
    mean_rel: np.ndarray
    max_rel_input: np.ndarray
    projector_only_mean: np.ndarray
    mean_delta: np.ndarray
    top_dir: np.ndarray
    energy: np.ndarray
    image_r: np.ndarray
    gram: np.ndarray
    fit_delta: np.ndarray
    fit_base_norm: np.ndarray
    fit_owner: np.ndarray

    @property
    def has_image(self) -> np.ndarray:
        return self.n_tokens > 0


def _offsets(idx: Sequence[int], samples: Sequence[Sample]) -> list[int]:
    """Index of each sample's first image in the batch's flat image list."""
    starts, pos = [], 0
    for i in idx:
        starts.append(pos)
        pos += len(samples[i].images)
    return starts


def _cumulative_energy(s: torch.Tensor, k: int) -> np.ndarray:
    """Cumulative energy share of the top-k singular values s (descending); NaN for an all-zero spectrum,
    1.0 past the rank. Used by the float64 reference."""
    e = s.double() ** 2
    out = np.full(k, np.nan)
    total = e.sum().item()
    if total > 0:
        c = (torch.cumsum(e, 0) / total).cpu().numpy()
        out[: min(k, c.size)] = c[:k]
        out[c.size :] = 1.0
    return out


def _image_norm_r(delta: torch.Tensor, top: torch.Tensor, base_norm: torch.Tensor) -> float:
    """Pearson r of c_t = ⟨ΔE_t, v⟩ (v = the image's top right singular vector, sign fixed so mean c ≥ 0)
    against ‖E0_t‖, over the image's T tokens. c_t = σ_1·ũ_1[t], so this is ProjLens's ũ_1-vs-norm r
    (they leave the SVD sign free, which can only flip r's sign; their cut of tokens with ‖E0_t‖ ≥ 175 is a
    LLaVA-7B artefact threshold with no counterpart here, so every token is kept)."""
    c = delta @ top  # (T,)
    if c.mean() < 0:
        c = -c
    c, x = c - c.mean(), base_norm - base_norm.mean()  # (T,), (T,)
    denom = (c.norm() * x.norm()).item()
    if c.numel() < 3 or denom <= _EPS:
        return float("nan")
    return float((c @ x).item() / denom)


def drift_spectra_float64(
    delta: torch.Tensor, lengths: Sequence[int], base_norm: torch.Tensor, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference for `drift_spectra`: one float64 SVD per sample (what the drift pass did before it was
    batched; kept for the tests and `benchmarks/bench_drift.py`). Same arguments and results."""
    top, energy, image_r = [], [], []
    for d_i, n_i in zip(delta.double().split(list(lengths)), base_norm.double().split(list(lengths))):
        _, sv, vh = torch.linalg.svd(d_i, full_matrices=False)
        top.append(vh[0].float().cpu().numpy() if sv[0] > 0 else np.full(d_i.shape[1], np.nan, np.float32))
        energy.append(_cumulative_energy(sv, k))
        image_r.append(_image_norm_r(d_i, vh[0], n_i))
    return np.stack(top), np.stack(energy), np.asarray(image_r)


def drift_spectra(
    delta: torch.Tensor, lengths: Sequence[int], base_norm: torch.Tensor, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample spectrum of ΔE for a batch, in one batched float32 eigenproblem on delta's device.

    delta (R, D): the token rows of B samples back to back, `lengths` (B,) rows each; base_norm (R,) ‖E0_t‖.
    Returns top_dir (B, D) float32 (the top right singular vector, sign free; NaN for an all-zero ΔE),
    energy (B, k) (cumulative energy share of the top-1..k components, as `DriftCollection.energy`) and
    image_r (B,) (`_image_norm_r`).

    Why not one SVD per sample: that is B small LAPACK calls in float64 per batch, with a host sync each,
    slow on a GPU (float64, launch-bound) and the largest CPU cost of the pass. ΔE_i (T, D) has the singular
    values √λ of its Gram matrix; with T ≤ D the (T, T) Gram ΔE ΔEᵀ is the small side (576 × 576 for a
    LLaVA-1.5 image against D = 4096), else the (D, D) one. Samples are zero-padded to the longest T: zero
    rows add only zero eigenvalues. float32 is enough for what is kept: energy shares to ~1e-6, and the
    top vector to the precision its gap σ1² − σ2² allows (a float64 SVD cannot do better there either).
    """
    dev = delta.device
    b = len(lengths)
    rows = list(lengths)
    x = torch.nn.utils.rnn.pad_sequence(list(delta.float().split(rows)), batch_first=True)  # (B, T, D)
    t, d = x.shape[1], x.shape[2]
    if t <= d:
        lam, u = torch.linalg.eigh(x @ x.transpose(1, 2))  # (B, T) ascending, (B, T, T)
        top = (x.transpose(1, 2) @ u[:, :, -1:])[..., 0]  # (B, D) = ΔEᵀ u1 = σ1 v1
    else:
        lam, vecs = torch.linalg.eigh(x.transpose(1, 2) @ x)  # (B, D), (B, D, D)
        top = vecs[:, :, -1]  # (B, D)
    lam = lam.flip(-1).clamp_min(0.0).double()  # (B, r) descending
    total = lam.sum(-1, keepdim=True)  # (B, 1)
    share = torch.cumsum(lam, -1) / total.clamp_min(torch.finfo(torch.float64).tiny)  # (B, r)
    energy = torch.ones(b, k, dtype=torch.float64, device=dev)
    energy[:, : min(k, share.shape[1])] = share[:, :k]
    energy[total[:, 0] <= 0] = float("nan")
    zero = lam[:, 0] <= 0  # (B,) no drift: no direction
    top = top / top.norm(dim=1, keepdim=True).clamp_min(_EPS)
    top[zero] = float("nan")

    # image_r: Pearson r of c_t = ⟨ΔE_t, v⟩ (sign fixed so mean c ≥ 0) against ‖E0_t‖, per sample
    xd = torch.nn.utils.rnn.pad_sequence(list(delta.double().split(rows)), batch_first=True)  # (B, T, D)
    nrm = torch.nn.utils.rnn.pad_sequence(list(base_norm.double().split(rows)), batch_first=True)  # (B, T)
    n_t = torch.as_tensor(rows, dtype=torch.float64, device=dev)  # (B,)
    mask = torch.arange(t, device=dev)[None, :] < n_t[:, None]  # (B, T)
    c = (xd @ torch.nan_to_num(top).double()[:, :, None])[..., 0]  # (B, T), 0 on padding
    c = torch.where((c.sum(1) / n_t < 0)[:, None], -c, c)
    c = torch.where(mask, c - (c.sum(1) / n_t)[:, None], 0.0)
    nrm = torch.where(mask, nrm - (nrm.sum(1) / n_t)[:, None], 0.0)
    denom = c.norm(dim=1) * nrm.norm(dim=1)  # (B,)
    r = (c * nrm).sum(1) / denom.clamp_min(_EPS)
    r = torch.where((n_t < 3) | (denom <= _EPS) | zero, float("nan"), r)
    return top.cpu().numpy(), energy.cpu().numpy(), r.cpu().numpy()


class _Segments:
    """Per-sample reductions over a batch's token rows: `owner` (R,) is each row's sample, `count` (B,) the
    rows per sample (none empty). Results come to the host as NumPy."""

    def __init__(self, owner: torch.Tensor, count: torch.Tensor):
        self.owner, self.count = owner, count

    def max(self, v: torch.Tensor) -> np.ndarray:
        out = torch.full((self.count.numel(),), -torch.inf, dtype=v.dtype, device=v.device)
        return out.scatter_reduce(0, self.owner, v, "amax").cpu().numpy()  # (B,)

    def mean(self, v: torch.Tensor) -> np.ndarray:
        sums = torch.zeros((self.count.numel(), *v.shape[1:]), dtype=v.dtype, device=v.device)
        sums = sums.index_add(0, self.owner, v)  # (B, ...)
        return (sums / self.count.view(-1, *([1] * (v.dim() - 1)))).cpu().numpy()


def _using(model):
    """A context yielding the model: a view's `active()`, or the model itself."""
    return model.active() if hasattr(model, "active") else nullcontext(model)


@torch.no_grad()
def collect_drift(
    base: nn.Module,
    finetuned: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    load_image: Callable[[str], Any],
    *,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
    energy_ranks: int = 4,
    fit_samples: int = 1000,
    max_fit_tokens: int = 50000,
    fit_every: int | None = None,
    position: int = 0,
    show_progress: bool = True,
) -> DriftCollection:
    """One pass: both models see the same pixels (`processor` = the base's), each through its own tower.

    `base` and `finetuned` are models, or views with an `active()` context that yields one
    (`poisonguard.models.AdapterView`: one peft model serves as both, adapter off and on).
    The token rows of `fit_samples` evenly spaced samples (at most `max_fit_tokens` rows) are kept for the
    norm law; everything else is reduced per sample, so memory does not grow with tokens × samples.
    A fan-out over shards (flows/extract.py) passes the whole drop's `fit_every` and each shard's `position`
    (image samples before it), so `merge_drift` of the shards keeps the same token rows as one pass.
    The per-sample statistics are computed batch-wide on the models' device (segment reductions and one
    batched eigenproblem, `drift_spectra`) and come to the host once per batch.
    Batches hold `batch_size` samples, and with `max_batch_tokens` also at most that many image tokens
    (`_drift_batches`), so a few huge Qwen2-VL images do not share one vision-tower call.
    """
    n = len(samples)
    with _using(base) as m0:
        d = m0.get_output_embeddings().weight.shape[1]
    nan = np.full(n, np.nan)
    col = DriftCollection(
        ids=np.asarray([s.id for s in samples], dtype=str),
        n_tokens=np.zeros(n, dtype=np.int64),
        per_token_max=nan.copy(),
        per_token_mean=nan.copy(),
        max_rel=nan.copy(),
        mean_rel=nan.copy(),
        max_rel_input=nan.copy(),
        projector_only_mean=nan.copy(),
        mean_delta=np.full((n, d), np.nan, dtype=np.float32),
        top_dir=np.full((n, d), np.nan, dtype=np.float32),
        energy=np.full((n, energy_ranks), np.nan),
        image_r=nan.copy(),
        gram=np.zeros((d, d)),
        fit_delta=np.zeros((0, d), dtype=np.float32),
        fit_base_norm=np.zeros(0),
        fit_owner=np.zeros(0, dtype=np.int64),
    )
    with_images = [i for i, s in enumerate(samples) if s.images]
    if fit_every is None:
        fit_every = fit_stride(len(with_images), fit_samples)
    fit_rows: list[np.ndarray] = []
    fit_norms: list[np.ndarray] = []
    fit_owner: list[np.ndarray] = []
    kept = 0
    progress = tqdm(total=len(with_images), desc="projector drift", disable=not show_progress, leave=False)
    batches = _drift_batches(samples, with_images, load_image, processor, batch_size, max_batch_tokens)
    for positions, images in batches:
        progress.update(len(positions))
        idx = [with_images[q] for q in positions]
        inputs = image_inputs(processor, images)
        with _using(base) as m0:
            f0 = projector_features(m0, inputs, on_device=True)
        v0 = torch.cat(f0.v)  # (R, D_in): every token of the batch, on the model's device
        with _using(finetuned) as m1:
            f1 = projector_features(m1, inputs, on_device=True)
            p1_v0 = apply_projector(m1, v0, on_device=True)  # (R, D): the fine-tuned projector on v0
        v1 = torch.cat(f1.v)  # (R, D_in)
        e0, e1 = torch.cat(f0.e), torch.cat(f1.e)  # (R, D)
        e1, v1, p1_v0 = e1.to(e0.device), v1.to(e0.device), p1_v0.to(e0.device)
        delta = (e1 - e0).double()  # (R, D)
        r = delta.norm(dim=1)  # (R,)
        base_norm = e0.norm(dim=1).double()  # (R,)
        rel = r / base_norm.clamp_min(_EPS)  # (R,)
        rel_input = r / v1.norm(dim=1).double().clamp_min(_EPS)  # (R,)
        proj_only = (p1_v0 - e0).norm(dim=1).double()  # (R,): tower held at base
        col.gram += (delta.T @ delta).cpu().numpy()  # (D, D)
        image_rows = [e.shape[0] for e in f0.e]
        per_sample = [
            sum(image_rows[a : a + len(samples[i].images)]) for a, i in zip(_offsets(idx, samples), idx)
        ]
        # per-sample reductions over token rows, batched: owner (R,) says which sample a row belongs to
        lengths = torch.as_tensor(per_sample, device=delta.device)  # (B,)
        owner = torch.repeat_interleave(torch.arange(len(idx), device=delta.device), lengths)  # (R,)
        seg = _Segments(owner, lengths.double())

        rows_of = np.asarray(idx)
        col.n_tokens[rows_of] = per_sample
        col.per_token_max[rows_of], col.per_token_mean[rows_of] = seg.max(r), seg.mean(r)
        col.max_rel[rows_of], col.mean_rel[rows_of] = seg.max(rel), seg.mean(rel)
        col.max_rel_input[rows_of] = seg.max(rel_input)
        col.projector_only_mean[rows_of] = seg.mean(proj_only)
        col.mean_delta[rows_of] = seg.mean(delta)
        col.top_dir[rows_of], col.energy[rows_of], col.image_r[rows_of] = drift_spectra(
            delta, per_sample, base_norm, energy_ranks
        )
        bounds = np.concatenate(([0], np.cumsum(per_sample)))
        for j, i in enumerate(idx):
            if (position + positions[j]) % fit_every == 0 and kept < max_fit_tokens:
                a, b = int(bounds[j]), int(bounds[j + 1])
                fit_rows.append(delta[a:b].float().cpu().numpy())
                fit_norms.append(base_norm[a:b].cpu().numpy())
                fit_owner.append(np.full(b - a, i))
                kept += b - a
    progress.close()
    if fit_rows:
        col.fit_delta = np.concatenate(fit_rows)[:max_fit_tokens]
        col.fit_base_norm = np.concatenate(fit_norms)[:max_fit_tokens]
        col.fit_owner = np.concatenate(fit_owner)[:max_fit_tokens]
    return col


def fit_stride(n_with_images: int, fit_samples: int = 1000) -> int:
    """Every how many image samples one keeps its token rows for the norm law (`collect_drift`)."""
    return max(1, -(-n_with_images // max(1, fit_samples)))


def merge_drift(parts: Sequence[DriftCollection], max_fit_tokens: int = 50000) -> DriftCollection:
    """One collection from the collections of consecutive shards (in order): rows concatenated, Gram
    matrices summed, the kept token rows concatenated and cut at `max_fit_tokens` as one pass would."""
    if not parts:
        raise ValueError("merge_drift needs at least one collection")
    cat = {name: np.concatenate([getattr(p, name) for p in parts]) for name in (
        "ids", "n_tokens", "per_token_max", "per_token_mean", "max_rel", "mean_rel", "max_rel_input",
        "projector_only_mean", "mean_delta", "top_dir", "energy", "image_r")}
    offsets = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
    fit_owner = np.concatenate([p.fit_owner + o for p, o in zip(parts, offsets)])[:max_fit_tokens]
    return DriftCollection(
        **cat,
        gram=np.sum([p.gram for p in parts], axis=0),
        fit_delta=np.concatenate([p.fit_delta for p in parts])[:max_fit_tokens],
        fit_base_norm=np.concatenate([p.fit_base_norm for p in parts])[:max_fit_tokens],
        fit_owner=fit_owner,
    )


def _drift_batches(samples: Sequence[Sample], with_images: list[int], load_image: Callable[[str], Any],
                   processor: Any, batch_size: int, max_batch_tokens: int | None):
    """(positions in `with_images`, the batch's images) per batch, in input order: consecutive runs of
    `batch_size` samples, cut earlier when `max_batch_tokens` is given and the batch's image tokens (summed:
    the vision tower sees every image's patches, not a padded rectangle) would exceed it. A sample over the
    budget alone gets a batch of its own."""
    if max_batch_tokens is None:
        for start in range(0, len(with_images), batch_size):
            positions = list(range(start, min(start + batch_size, len(with_images))))
            yield positions, [load_image(ref) for q in positions for ref in samples[with_images[q]].images]
        return
    positions, images, tokens = [], [], 0
    for q, i in enumerate(with_images):
        own = [load_image(ref) for ref in samples[i].images]
        n = sum(image_token_count(processor, im.size) for im in own)
        if positions and (len(positions) == batch_size or tokens + n > max_batch_tokens):
            yield positions, images
            positions, images, tokens = [], [], 0
        positions.append(q)
        images += own
        tokens += n
    if positions:
        yield positions, images


def shared_direction(col: DriftCollection) -> np.ndarray:
    """Unit (D,) top eigenvector of Σ_t ΔE_tᵀΔE_t: the direction all tokens drift along (ProjLens §4.3, not
    centred). Sign fixed so the average sample drifts positively along it."""
    _, vec = np.linalg.eigh(col.gram)
    g = vec[:, -1]
    mean_proj = np.nanmean(col.mean_delta.astype(np.float64) @ g)
    return g if mean_proj >= 0 else -g


def drift_scores(col: DriftCollection, direction: np.ndarray) -> dict[str, np.ndarray]:
    """The per-sample scores of DRIFT_SCORES, each (N,), NaN without an image."""
    return {
        "drift_max": col.per_token_max,
        "drift_mean": col.per_token_mean,
        "drift_max_rel": col.max_rel,
        "drift_mean_rel": col.mean_rel,
        "drift_max_rel_input": col.max_rel_input,
        "drift_proj": col.mean_delta.astype(np.float64) @ direction,
    }


def drift_features(col: DriftCollection, direction: np.ndarray) -> FeatureSet:
    """A FeatureSet carrying the drift scores as `extra_scores` (for ProjectorDriftDetector or fusion)."""
    return FeatureSet(ids=col.ids, extra_scores=drift_scores(col, direction))


# ---------------------------------------------------------------------------------------------- statistics


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    """Least squares y ≈ slope·x + intercept and Pearson r; None with < 3 points or a constant x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return {"n": int(x.size), "slope": None, "intercept": None, "r": None}
    fit = linregress(x, y)
    r = float(fit.rvalue) if np.isfinite(fit.rvalue) else None
    return {"n": int(x.size), "slope": float(fit.slope), "intercept": float(fit.intercept), "r": r}


def norm_law(
    col: DriftCollection,
    direction: np.ndarray,
    flagged: np.ndarray | None = None,
    labels: tuple[str, str] = ("flagged", "unflagged"),
) -> dict[str, Any]:
    """ProjLens's norm law on the kept tokens: coordinate ⟨ΔE_t, g⟩ against ‖E0_t‖, overall and, given a
    per-sample mask (detector flags, or the benchmark's truth with labels ("poisoned", "clean")), for the
    tokens of the masked and the other samples separately."""
    coord = col.fit_delta.astype(np.float64) @ direction  # (R,)
    out: dict[str, Any] = {"all": linear_fit(col.fit_base_norm, coord)}
    if flagged is not None:
        tok_flag = np.asarray(flagged, dtype=bool)[col.fit_owner]  # (R,)
        out[labels[0]] = linear_fit(col.fit_base_norm[tok_flag], coord[tok_flag])
        out[labels[1]] = linear_fit(col.fit_base_norm[~tok_flag], coord[~tok_flag])
    return out


def image_r_summary(
    col: DriftCollection,
    mask: np.ndarray | None = None,
    labels: tuple[str, str] = ("flagged", "unflagged"),
    paper_r: float = 0.95,
) -> dict[str, Any]:
    """Distribution over samples of the per-image norm-law r (`DriftCollection.image_r`), overall and for the
    masked / other samples: median, quartiles, and the share of images above ProjLens's r > `paper_r`."""

    def describe(r: np.ndarray) -> dict[str, Any]:
        r = r[np.isfinite(r)]
        if r.size == 0:
            return {"n": 0, "median": None, "q25": None, "q75": None, "share_above_paper": None}
        q25, med, q75 = np.quantile(r, [0.25, 0.5, 0.75]).tolist()
        return {
            "n": int(r.size),
            "median": med,
            "q25": q25,
            "q75": q75,
            "share_above_paper": float((r > paper_r).mean()),
        }

    out: dict[str, Any] = {"paper_r": paper_r, "all": describe(col.image_r)}
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        out[labels[0]], out[labels[1]] = describe(col.image_r[m]), describe(col.image_r[~m])
    return out


def direction_alignment(
    col: DriftCollection, direction: np.ndarray, *, max_pairs: int = 500, seed: int = 0
) -> dict[str, float | None]:
    """How much the samples' own top drift directions agree: |cos| with the shared direction, and the mean
    pairwise |cos| over up to `max_pairs` samples (ProjLens: one "universal drift vector")."""
    dirs = col.top_dir[col.has_image].astype(np.float64)  # (M, D), unit rows
    dirs = dirs[np.isfinite(dirs).all(axis=1)]  # a sample whose ΔE is zero has no direction
    if dirs.shape[0] == 0:
        return {
            "mean_abs_cos_to_shared": None,
            "median_abs_cos_to_shared": None,
            "mean_abs_cos_pairwise": None,
        }
    to_shared = np.abs(dirs @ direction)
    rng = np.random.default_rng(seed)
    pick = dirs[rng.choice(dirs.shape[0], size=min(max_pairs, dirs.shape[0]), replace=False)]
    cos = np.abs(pick @ pick.T)  # (m, m)
    m = cos.shape[0]
    pairwise = float((cos.sum() - np.trace(cos)) / (m * (m - 1))) if m > 1 else None
    return {
        "mean_abs_cos_to_shared": float(to_shared.mean()),
        "median_abs_cos_to_shared": float(np.median(to_shared)),
        "mean_abs_cos_pairwise": pairwise,
    }


def energy_summary(col: DriftCollection, flagged: np.ndarray | None = None) -> dict[str, Any]:
    """Mean and SD over samples of the cumulative ΔE energy of the top components, by group when flagged
    (samples whose ΔE is exactly zero have no spectrum and are left out)."""

    def describe(rows: np.ndarray) -> dict[str, Any]:
        rows = rows[np.isfinite(rows).all(axis=1)]
        if rows.shape[0] == 0:
            return {"n": 0, "mean": None, "std": None}
        return {"n": int(rows.shape[0]), "mean": rows.mean(0).tolist(), "std": rows.std(0).tolist()}

    e = col.energy[col.has_image]
    out = {"ranks": list(range(1, col.energy.shape[1] + 1)), "all": describe(e)}
    if flagged is not None:
        f = np.asarray(flagged, dtype=bool)[col.has_image]
        out["flagged"], out["unflagged"] = describe(e[f]), describe(e[~f])
    return out


@torch.no_grad()
def logit_lens(
    model: nn.Module, tokenizer: Any, direction: np.ndarray | torch.Tensor, *, top_k: int = 8
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Top tokens of lm_head(±g) and lm_head(norm(±g)) for a unit direction g in the LM's hidden space."""
    head = model.get_output_embeddings()
    final_norm = getattr(model.get_decoder(), "norm", None)
    g = torch.as_tensor(np.asarray(direction), dtype=head.weight.dtype, device=head.weight.device)
    g = g / g.norm().clamp_min(_EPS)  # (D,)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for sign, vec in (("+", g), ("-", -g)):
        views = {"raw": vec}
        if final_norm is not None:
            views["final_norm"] = final_norm(vec[None])[0]
        out[sign] = {}
        for view, h in views.items():
            logits = head(h)  # (V,)
            top = torch.topk(logits, min(top_k, logits.numel()))
            out[sign][view] = [
                {"token": tokenizer.decode([int(i)]), "id": int(i), "logit": float(val)}
                for val, i in zip(top.values, top.indices)
            ]
    return out


def score_summary(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float | int | None]]:
    """Quantiles of each score over the samples that have one."""
    names = ("min", "median", "q90", "q99", "max")
    out: dict[str, dict[str, float | int | None]] = {}
    for name, s in scores.items():
        v = np.asarray(s, dtype=np.float64)
        v = v[np.isfinite(v)]
        q = np.quantile(v, [0.0, 0.5, 0.9, 0.99, 1.0]).tolist() if v.size else [None] * len(names)
        out[name] = {"n": int(v.size), **dict(zip(names, q))}
    return out
