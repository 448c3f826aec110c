"""`reproduce sae-progressive-codes --quick`: the three kinds recover the TMS, Multi-TopK's code holds up at k' > k."""

import numpy as np
import pytest


@pytest.mark.slow
def test_progressive_codes_quick_run(tmp_path):
    from experiments.sae_progressive_codes import run

    ds = run(tmp_path, size="quick", progress=False)
    for name in ("sae_progressive_codes.nc", "sae_progressive_codes.png", "report.md"):
        assert (tmp_path / name).exists()
    assert np.all(ds["matched_cosine"].values >= 0.95)
    fvu = ds["fvu_at_k"]
    # trained at k = 1: read at k' = 4 and beyond, Multi-TopK's reconstruction is better than TopK's
    assert np.all(fvu.sel(kind="multi-topk", k_eval=slice(4, None)).values
                  < fvu.sel(kind="topk", k_eval=slice(4, None)).values)
    for name in ("r2_codes", "r2_outside_topk", "r2_negative"):
        assert np.all((ds[name].values > -1) & (ds[name].values <= 1))
