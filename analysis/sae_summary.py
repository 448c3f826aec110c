"""One dataset for `slt-superposition sae`: SAEs on every instance of a trained grid, with W and the matching.

Variables (over the train grid's dims, `dict_size`, `hidden`, `feature`, `latent`): the SAE's own
(`decoder`, `encoder`, `b_enc`, `b_pre`, `fvu`, `dead_fraction`, `latent_frequency`, `l0`,
`threshold`, `loss_curve`, `k`), the model's `W` and `b`, and the ground-truth matching:
`matched_cosine` and `mmcs` per dictionary size (over the represented features), `well_posed`,
`n_represented`, `expected_active`, the scores at n_rep latents (`sae_matched_cosine`,
`sae_mmcs_at_n_rep`, `sae_fvu_at_n_rep`, `sae_dead_at_n_rep`, `sae_recovered`) and
`recovered_overcompleteness` against `overcompleteness` (k/m, represented features per dimension).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.measures import n_represented, overcompleteness, represented_features
from analysis.sae import mmcs, recovered_overcompleteness, train_sae
from analysis.sae_match import matched_cosine
from analysis.sae_recovery import expected_active, grid_saes, hidden_activations, recovery_scores, well_posed
from slt_superposition.provenance import provenance_attrs


def sae_dataset(train: xr.Dataset, *, kind: str, dict_sizes, k=None, n_samples: int, key, progress: bool = False,
                source: str = "", **train_kwargs) -> xr.Dataset:
    """SAEs of `kind` and every size in `dict_sizes` on every instance of `train`, matched against W.

    `k` None: per instance from the feature probability (`grid_saes`); else that k for all.
    `train_kwargs` go to `train_sae` (steps, batch_size, learning_rate, schedule, restarts).
    """
    if k is None:
        sae = grid_saes(train, n_samples=n_samples, key=key, dict_sizes=dict_sizes, kind=kind, progress=progress,
                        **train_kwargs)
    else:
        acts = hidden_activations(train, n_samples=n_samples, key=key)
        k = float(k) if kind == "batch-topk" else int(k)
        sae = train_sae(acts, dict_sizes=dict_sizes, k=k, kind=kind, key=key, **train_kwargs)
        sae["k"] = xr.full_like(sae["fvu"].isel(dict_size=0, drop=True), k).assign_attrs(
            long_name="SAE k (codes per sample)", units="latents")
    W = train["W"]
    represented = represented_features(W)
    sae["W"], sae["b"] = W, train["b"]
    sae["matched_cosine"] = matched_cosine(W, sae["decoder"], feature_mask=represented).transpose(*sae["fvu"].dims)
    sae["mmcs"] = mmcs(W, sae["decoder"], feature_mask=represented).transpose(*sae["fvu"].dims)
    sae["well_posed"] = well_posed(W)
    sae["n_represented"] = n_represented(W)
    sae["expected_active"] = expected_active(W, W["feature_probability"])
    sae = sae.merge(recovery_scores(sae, W))
    sae["recovered_overcompleteness"] = recovered_overcompleteness(sae, W, feature_mask=represented)
    sae["overcompleteness"] = overcompleteness(W)
    for name in ("matched_cosine", "mmcs"):
        sae[name].attrs.update(units="1", long_name=("Hungarian-matched cosine" if name == "matched_cosine"
                                                     else "MMCS") + " over the represented features")
    config = {"source": source, "kind": kind, "dict_sizes": [int(s) for s in dict_sizes], "k": k,
              "n_samples": n_samples, "key": np.asarray(__import__("jax").random.key_data(key)).tolist(),
              **{name: value for name, value in train_kwargs.items()}}
    sae.attrs = provenance_attrs("sae", config)
    return sae
