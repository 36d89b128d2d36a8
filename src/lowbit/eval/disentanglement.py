"""Disentanglement metrics: InfoMEC (Hsu et al., 2023, "Disentanglement via Latent Quantization"), MIG, DCI.

InfoMEC, as defined in the QLAE paper and its reference code:

* ``NMI[i, j] = I(factor_i; latent_j) / H(factor_i)``; discrete latents by the exact (plug-in) mutual information
  of the contingency table, continuous latents standardised and estimated with scikit-learn's k-NN estimator
  (``mutual_info_classif``, k = 10, a KSG-type estimator for continuous-discrete pairs; Ross, 2014).
* active latents: range > 0 (discrete) or range > max range / 20 (continuous), ranges of the raw latents.
* ``InfoM = (mean_j max_i NMI / sum_i NMI - 1/S) / (1 - 1/S)`` over active latents j (S factors);
  ``InfoC = (mean_i max_j NMI / sum_j NMI - 1/L) / (1 - 1/L)`` over factors i, L active latents.
* ``InfoE = mean_i (H_null - CE_i) / H_null``, CE_i the in-sample log-loss of an unpenalised multinomial logistic
  regression (balanced class weights) from the latents (one-hot if discrete, standardised if continuous) to
  factor i, H_null that of the same regression on constant input.

MIG (Chen et al., 2018) uses latents binned into 20 equal-width bins (discrete latents as they are); DCI
(Eastwood & Williams, 2018) uses random-forest feature importances and reports test accuracy as informativeness.
scikit-learn is imported lazily (only when a metric runs).
"""

from __future__ import annotations

import warnings

import numpy as np

from lowbit.errors import LowbitError

__all__ = ["nmi_matrix", "active_latents", "infomec", "mig", "dci"]


def _labels(x: np.ndarray) -> np.ndarray:
    """Label-encode each column of x (n, k) to 0..K-1."""
    return np.stack([np.unique(x[:, j], return_inverse=True)[1].reshape(-1) for j in range(x.shape[1])], axis=1)


def _check(factors: np.ndarray, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(factors)
    z = np.asarray(latents)
    if f.ndim == 1:
        f = f[:, None]
    if z.ndim == 1:
        z = z[:, None]
    if f.ndim != 2 or z.ndim != 2:
        raise LowbitError(f"factors and latents must be 2-D (samples, k); got {f.shape} and {z.shape}")
    if f.shape[0] != z.shape[0]:
        raise LowbitError(f"factors and latents need the same number of samples; got {f.shape[0]} and {z.shape[0]}")
    if f.shape[0] < 20:
        raise LowbitError(f"need at least 20 samples to estimate disentanglement metrics, got {f.shape[0]}")
    if np.issubdtype(z.dtype, np.floating) and not np.isfinite(z).all():
        raise LowbitError("latents contain NaN or inf values; the model diverged")
    return f, z


def _discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Exact (plug-in) mutual information in nats of two label vectors."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    joint = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype(np.float64)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def _entropy(a: np.ndarray) -> float:
    p = np.bincount(a).astype(np.float64)
    p = p[p > 0] / a.shape[0]
    return float(-(p * np.log(p)).sum())


def _standardise(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    sd = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def nmi_matrix(factors: np.ndarray, latents: np.ndarray, discrete_latents: bool, seed: int = 0) -> np.ndarray:
    """NMI[i, j] = I(factor_i; latent_j) / H(factor_i), shape (factors, latents)."""
    f, z = _check(factors, latents)
    fl = _labels(f)
    out = np.zeros((f.shape[1], z.shape[1]))
    if discrete_latents:
        zl = _labels(z)
    else:
        from sklearn.feature_selection import mutual_info_classif

        zs = _standardise(z)
    for i in range(f.shape[1]):
        h = _entropy(fl[:, i])
        if h <= 0:
            continue  # a constant factor carries no information; its row stays 0
        if discrete_latents:
            mi = np.array([_discrete_mi(fl[:, i], zl[:, j]) for j in range(z.shape[1])])
        else:
            mi = mutual_info_classif(zs, fl[:, i], discrete_features=False, n_neighbors=10, random_state=seed)
        out[i] = np.asarray(mi).reshape(-1) / h
    return out


def active_latents(latents: np.ndarray, discrete_latents: bool) -> np.ndarray:
    """Active-latent mask: range > 0 (discrete) or range > max range / 20 (continuous)."""
    z = np.asarray(latents, dtype=np.float64)
    ranges = z.max(axis=0) - z.min(axis=0)
    if discrete_latents:
        return ranges > 0
    return ranges > ranges.max() / 20 if ranges.max() > 0 else np.zeros_like(ranges, dtype=bool)


def _ratio_score(m: np.ndarray, axis: int) -> float:
    """Mean over the other axis of max/sum along `axis`, rescaled so 1/k -> 0 and 1 -> 1 (k = size of `axis`)."""
    k = m.shape[axis]
    if k <= 1:
        return 1.0
    s = m.sum(axis=axis)
    r = np.where(s > 0, m.max(axis=axis) / np.where(s > 0, s, 1.0), 1.0 / k)  # no information: no credit
    return float((r.mean() - 1.0 / k) / (1.0 - 1.0 / k))


def _logreg_ce(x: np.ndarray, y: np.ndarray) -> float:
    """In-sample log-loss of an unpenalised multinomial logistic regression with balanced class weights."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits

    # C = inf is "no penalty" (penalty=None is deprecated in scikit-learn 1.8+); lbfgs fits the multinomial model.
    model = LogisticRegression(C=np.inf, class_weight="balanced", solver="lbfgs", max_iter=100, tol=1e-4)
    # One BLAS thread: on a loaded 2-core machine multi-threaded BLAS made this fit ~30x slower (38 s vs 1.3 s).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return float(log_loss(y, model.predict_proba(x), labels=model.classes_))


def _infoe(fl: np.ndarray, z: np.ndarray, discrete_latents: bool) -> tuple[float, np.ndarray]:
    if discrete_latents:
        zl = _labels(z)
        offs = np.concatenate([[0], np.cumsum(zl.max(axis=0) + 1)[:-1]])
        x = np.zeros((z.shape[0], int((zl.max(axis=0) + 1).sum())))
        np.put_along_axis(x, zl + offs, 1.0, axis=1)  # one-hot per latent
    else:
        x = _standardise(z)
    null = np.zeros((z.shape[0], 1))
    per = []
    for i in range(fl.shape[1]):
        if fl[:, i].max() == 0:
            continue  # constant factor: nothing to predict
        h_null = _logreg_ce(null, fl[:, i])
        per.append((h_null - _logreg_ce(x, fl[:, i])) / h_null)
    return (float(np.mean(per)) if per else 0.0), np.array(per)


def infomec(factors: np.ndarray, latents: np.ndarray, discrete_latents: bool, seed: int = 0) -> dict:
    """InfoM, InfoE, InfoC of latents (n, L) for ground-truth factors (n, S); see the module docstring.

    Returns a dict with 'infom', 'infoe', 'infoc' (floats), 'nmi' (S, L), 'active' (L,) and 'infoe_per_factor'.
    If no latent is active (a collapsed encoder) all three scores are 0.
    """
    f, z = _check(factors, latents)
    fl = _labels(f)
    nmi = nmi_matrix(fl, z, discrete_latents, seed)
    act = active_latents(z, discrete_latents)
    if not act.any():  # every latent constant (a collapsed encoder): no information, scored 0
        zero = np.zeros(0)
        return {"infom": 0.0, "infoe": 0.0, "infoc": 0.0, "nmi": nmi, "active": act, "infoe_per_factor": zero}
    pruned = nmi[:, act]
    infoe, per = _infoe(fl, z, discrete_latents)
    return {
        "infom": _ratio_score(pruned, axis=0),
        "infoe": infoe,
        "infoc": _ratio_score(pruned, axis=1),
        "nmi": nmi,
        "active": act,
        "infoe_per_factor": per,
    }


def mig(factors: np.ndarray, latents: np.ndarray, discrete_latents: bool = False, bins: int = 20) -> float:
    """Mutual information gap (Chen et al., 2018): mean over factors of the top-2 NMI gap; latents binned."""
    f, z = _check(factors, latents)
    fl = _labels(f)
    if discrete_latents:
        zl = _labels(z)
    else:
        zl = np.empty(z.shape, dtype=np.int64)
        for j in range(z.shape[1]):
            edges = np.histogram_bin_edges(z[:, j].astype(np.float64), bins=bins)
            zl[:, j] = np.clip(np.digitize(z[:, j], edges[1:-1]), 0, bins - 1)
    gaps = []
    for i in range(fl.shape[1]):
        h = _entropy(fl[:, i])
        if h <= 0:
            continue
        mi = np.sort([_discrete_mi(fl[:, i], zl[:, j]) for j in range(z.shape[1])])[::-1] / h
        gaps.append(mi[0] - (mi[1] if len(mi) > 1 else 0.0))
    return float(np.mean(gaps)) if gaps else 0.0


def dci(factors: np.ndarray, latents: np.ndarray, seed: int = 0, test_fraction: float = 0.2,
        n_estimators: int = 30) -> dict:
    """DCI (Eastwood & Williams, 2018) with random-forest importances: disentanglement, completeness, informativeness.

    Informativeness is the mean test accuracy of the per-factor classifiers (a held-out ``test_fraction``).
    """
    from sklearn.ensemble import RandomForestClassifier

    f, z = _check(factors, latents)
    fl = _labels(f)
    x = z.astype(np.float64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(x.shape[0])
    n_test = max(1, int(round(test_fraction * x.shape[0])))
    te, tr = perm[:n_test], perm[n_test:]
    r = np.zeros((x.shape[1], fl.shape[1]))  # importance of latent j for factor i
    acc = []
    for i in range(fl.shape[1]):
        clf = RandomForestClassifier(n_estimators=n_estimators, max_depth=12, min_samples_leaf=2,
                                     max_features=None, random_state=seed, n_jobs=1)
        clf.fit(x[tr], fl[tr, i])
        r[:, i] = np.abs(clf.feature_importances_)
        acc.append(float((clf.predict(x[te]) == fl[te, i]).mean()))

    def one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
        total = p.sum(axis=1, keepdims=True)
        p = p / np.clip(total, 1e-12, None)
        h = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(base)
        return np.where(total[:, 0] > 0, 1.0 - h, 0.0)  # no importance at all: no credit

    s, latents_n = fl.shape[1], x.shape[1]
    dis_per = one_minus_entropy(r, s) if s > 1 else np.ones(latents_n)
    rho = r.sum(axis=1) / max(r.sum(), 1e-12)
    com_per = one_minus_entropy(r.T, latents_n) if latents_n > 1 else np.ones(s)
    return {
        "disentanglement": float((rho * dis_per).sum()),
        "completeness": float(com_per.mean()),
        "informativeness": float(np.mean(acc)),
    }
