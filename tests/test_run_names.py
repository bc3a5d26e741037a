"""What `npvae train` prints and titles: words a reader cannot misread (issue 18)."""

from __future__ import annotations

import pytest

from npvae import plots
from npvae.__main__ import main

SMALL = ["--train-size", "300", "--test-size", "100", "--hidden", "32", "--latent", "2", "--batch-size", "50"]


def test_one_epoch_is_one_epoch_not_1_epochs(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "a"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "Trained 1 epoch in " in out and "1 epochs" not in out
    assert main(["train", "--out", str(tmp_path / "a"), "--resume", "--epochs", "2", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "Trained epoch 2 in " in out and "epochs 2-2" not in out


@pytest.mark.parametrize("args, expected", [
    ([], "VAE, L2 loss: reconstruction and KL per epoch"),
    (["--likelihood", "bernoulli"], "VAE, Bernoulli loss: reconstruction and KL per epoch"),
    (["--model", "ae"], "Autoencoder, L2 loss: the loss per epoch"),
])
def test_the_training_figure_spells_out_its_loss(tmp_path, monkeypatch, args, expected):
    titles = []
    real = plots.training_curves

    def spy(*a, **kw):
        titles.append(kw.get("title"))
        return real(*a, **kw)

    monkeypatch.setattr(plots, "training_curves", spy)
    assert main(["train", *SMALL, *args, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert titles == [expected]           # not "VAE (l2)", which reads like "VAE (12)"
