"""The sampling progress bar: it advances once per chunk of every block, ends at its total, and
changes no number."""

from __future__ import annotations

import re

import jax
import numpy as np

from slt_superposition import SGLDConfig, estimate_llc_batched
from slt_superposition.sampling_progress import LineFile


def regression(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, n, 2)).astype(np.float32)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    return {"w": w}, {"x": x, "y": np.einsum("ind,id->in", x, w)}


def loss(params, batch):
    return ((batch["x"] @ params["w"] - batch["y"]) ** 2).mean()


def test_bar_ends_at_its_total_and_changes_no_number(capfd):
    params, data = regression(0)
    config = SGLDConfig(step_size=1e-4, localization=10.0, num_chains=2, num_steps=300, num_burnin=100,
                        batch_size=50)
    quiet = estimate_llc_batched(loss, params, data, config=config, key=jax.random.key(1), checks=False)
    capfd.readouterr()
    shown = estimate_llc_batched(loss, params, data, config=config, key=jax.random.key(1), checks=False,
                                 verbose=True)
    err = capfd.readouterr().err
    np.testing.assert_array_equal(quiet["llc_per_chain"].values, shown["llc_per_chain"].values)
    np.testing.assert_array_equal(quiet["loss_trace"].values, shown["loss_trace"].values)
    # not a terminal: one line per redraw, the last one at the total (300 steps = 5 chunks of 64 per block)
    lines = [line for line in err.splitlines() if line.startswith("sampling:")]
    assert lines, err
    done, total = map(int, re.search(r"(\d+)/(\d+) \[", lines[-1]).groups())
    # each block of instances reports its own chunks: on a CPU every instance is a block of its own
    # (llc.sample_chains), elsewhere the 3 instances run as one block
    blocks = 3 if jax.default_backend() == "cpu" else 1
    assert done == total == 5 * blocks
    assert "sampling 3 instance(s) x 2 chains x 300 steps on" in err
    # per-instance chain lengths: the range, not an array's repr
    config = SGLDConfig(step_size=1e-4, localization=10.0, num_chains=2, num_steps=np.array([300, 100, 200]),
                        num_burnin=np.array([100, 50, 50]), batch_size=50)
    estimate_llc_batched(loss, params, data, config=config, key=jax.random.key(1), checks=False, verbose=True)
    assert "sampling 3 instance(s) x 2 chains x 100 to 300 steps on" in capfd.readouterr().err


def test_line_file_turns_redraws_into_lines():
    class Sink:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    stream = LineFile(sink)
    stream.write("\rsampling:  10%|#   | 1/10")
    stream.write("\rsampling:  20%|##  | 2/10")
    stream.write("\r          \r")
    assert sink.text == "sampling:  10%|#   | 1/10\nsampling:  20%|##  | 2/10\n"


def test_training_bar_in_a_log_is_one_line_per_redraw(capfd):
    from toy_models.train import TrainConfig, train_grid

    train_grid(TrainConfig(n_features=3, n_hidden=2, feature_probabilities=(0.5,), seeds=1, steps=100,
                           batch_size=32, chunk_steps=50, loss_curve_points=2, eval_samples=64), progress=True)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("training 1 instances")]
    assert lines and "\r" not in err  # a log gets lines, not carriage-return redraws
    assert "100/100" in lines[-1]  # and keeps the last one
