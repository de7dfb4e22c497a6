"""Training on random labels (Zhang et al. 2017, §2; Lee et al. 2019, §5.6): which labels change, how
many, how they are seeded, and that the test set and the scoring batch of SNIP keep the true labels."""

from __future__ import annotations

import math

import pytest
import torch
from test_data import write_idx_set

from prunelab import data
from prunelab.cli import main
from prunelab.data import FolderSplit
from prunelab.experiments.hparams import DataHparams, ModelHparams, PruneHparams, run_hash
from prunelab.experiments.protocols import prune_at_step
from prunelab.experiments.runner import RandomLabelsWarning, Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings

N, C = 4000, 10


def labelled(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random 1x3x3 uint8 images (so an image names its example) and labels i % classes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 3, 3), generator=g, dtype=torch.uint8), torch.arange(n) % classes


@pytest.fixture(scope="module")
def big():
    return data.from_tensors(labelled(N, C, 0), labelled(500, C, 1))


def within_binomial(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    """``count`` lies within ``sds`` standard deviations of a Binomial(n, p)'s mean."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def changed(a: torch.Tensor, b: torch.Tensor) -> int:
    return sum(int(x) != int(y) for x, y in zip(a.tolist(), b.tolist()))  # brute force, element by element


def test_fraction_zero_leaves_every_label():
    ds = data.from_tensors(labelled(100, C, 0), labelled(50, C, 1))
    same = ds.with_random_labels(0.0, seed=3)
    assert same is ds and torch.equal(same.train.labels, torch.arange(100) % C)


def test_all_random_labels_differ_from_the_true_ones_on_about_1_minus_1_over_c(big):
    true = torch.arange(N) % C
    ds = big.with_random_labels(1.0, seed=0)
    labels = ds.train.labels
    assert ds.random_labels == N and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < C
    # a uniform random label equals the true one with chance 1/C, independently per example
    assert within_binomial(changed(labels, true), N, 1 - 1 / C)
    # uniform over the classes: Pearson's chi-square with C - 1 = 9 degrees of freedom, below its 0.9999 quantile
    counts = [sum(1 for y in labels.tolist() if y == c) for c in range(C)]
    chi2 = sum((k - N / C) ** 2 / (N / C) for k in counts)
    assert chi2 < 33.7, counts
    # and unrelated to the true class: each true class keeps its label about 1/C of the time
    for c in range(C):
        mine = true == c
        assert within_binomial(int((labels[mine] == c).sum()), int(mine.sum()), 1 / C), c
    assert torch.equal(big.train.labels, true)  # the dataset it came from is untouched


def test_half_random_labels_touch_half_of_the_examples(big):
    true = torch.arange(N) % C
    ds = big.with_random_labels(0.5, seed=0)
    assert ds.random_labels == N // 2  # exactly round(fraction * N) examples are eligible
    # half of them are eligible and each of those changes with chance 1 - 1/C
    assert within_binomial(changed(ds.train.labels, true), N // 2, 1 - 1 / C)
    quarter = big.with_random_labels(0.25, seed=0)
    assert quarter.random_labels == N // 4
    assert within_binomial(changed(quarter.train.labels, true), N // 4, 1 - 1 / C)


def test_the_labels_depend_on_the_seed_alone(big):
    torch.manual_seed(1)
    first = big.with_random_labels(1.0, seed=5).train.labels
    torch.manual_seed(2)  # the global RNG plays no part
    again = big.with_random_labels(1.0, seed=5).train.labels
    assert torch.equal(first, again)
    other = big.with_random_labels(1.0, seed=6).train.labels
    assert within_binomial(changed(first, other), N, 1 - 1 / C)  # two independent draws agree 1/C of the time


def test_a_relabelled_example_keeps_its_label_in_every_epoch():
    ds = data.from_tensors(labelled(96, 4, 0), labelled(32, 4, 1)).with_random_labels(1.0, seed=2)
    loader = ds.loader("train", 32, seed=9)
    for epoch in range(3):
        served = torch.cat([y for _, y in loader.epoch(epoch)])
        assert torch.equal(served, ds.train.labels[loader.order(epoch)])


def test_the_test_split_is_never_relabelled(big):
    ds = big.with_random_labels(1.0, seed=0)
    assert ds.test is big.test and torch.equal(ds.test.labels, torch.arange(500) % C)
    served = torch.cat([y for _, y in ds.loader("test", 128).epoch(0)])
    assert torch.equal(served, torch.arange(500) % C)


def test_the_images_are_shared_not_copied(big):
    ds = big.with_random_labels(1.0, seed=0)
    assert ds.train.images is big.train.images
    assert ds.train.on("cpu")[0] is big.train.on("cpu")[0]


def test_image_folder_datasets_are_relabelled_too():
    samples = [(f"/nowhere/{i}.JPEG", i % 4) for i in range(400)]
    split = FolderSplit(samples, list("abcd"), 8, 8)
    ds = data.Dataset("folders", split, split, 4, (0.5,) * 3, (0.5,) * 3, None, "crop", list("abcd"), "test")
    out = ds.with_random_labels(1.0, seed=0)
    assert [p for p, _ in out.train.samples] == [p for p, _ in samples]  # the same images, in the same order
    assert [y for _, y in out.train.samples] == out.train.targets.tolist()
    assert within_binomial(changed(out.train.targets, torch.arange(400) % 4), 400, 3 / 4)
    assert out.test is split and [y for _, y in split.samples] == [i % 4 for i in range(400)]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "all"])
def test_a_fraction_outside_0_1_is_refused_at_once(bad):
    with pytest.raises(ValueError, match=r"random_labels must be a fraction .* in \[0, 1\]"):
        DataHparams("mnist", random_labels=bad)


def test_the_default_keeps_run_ids_and_1_equals_1_0():
    rep = Replicate(ModelHparams(), DataHparams("mnist"), TrainSettings())
    assert run_hash("dense", **rep.parts()) == run_hash("dense", model=ModelHparams(), dataset={"dataset": "mnist"},
                                                        training=TrainSettings(), seed=0)
    assert DataHparams("mnist", random_labels=1) == DataHparams("mnist", random_labels=1.0)
    assert DataHparams("mnist", random_labels=1).random_labels == 1.0
    assert DataHparams("mnist", random_labels=1) != DataHparams("mnist")


# ---- in a run: the training labels are random, the scoring batch and the test set are not ---------

TRAINING = TrainSettings(train="1ep", batch_size=16, lr=0.05)  # 64 examples: 4 steps


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


def test_snip_scores_the_true_labels_of_a_run_trained_on_random_labels(mnist_root, tmp_path, run_spy):
    runner = Runner(RunStore(tmp_path / "runs"), data_root=mnist_root, device="cpu")
    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist", random_labels=1.0), TRAINING, seed=0)
    true = torch.arange(64) % 10  # what write_idx_set wrote
    with pytest.warns(RandomLabelsWarning, match=r"training on random labels: 100% of the 64 training labels "
                      r"\(64\) redrawn uniformly from the 10 classes"):
        result = prune_at_step(runner, rep, PruneHparams(method="snip", sparsity=0.99, batch_per_class=2))
    assert result["status"] == "done"
    assert runner.store.hparams(result["id"])["dataset"]["random_labels"] == 1.0  # recorded, and a valid file

    # the dense and the pruned networks both trained on the same random labels, and were tested on the true ones
    (dense_train, dense_test), (pruned_train, pruned_test) = (
        (ds.train.labels, ds.test.labels) for ds in run_spy.trained_on)
    assert torch.equal(dense_train, pruned_train) and within_binomial(changed(dense_train, true), 64, 0.9)
    assert torch.equal(dense_test, torch.arange(32) % 10) and torch.equal(pruned_test, dense_test)

    # SNIP's batch: each image found among the training images by its pixels carries that example's true label
    (x, y), = run_spy.scored
    ds = runner.dataset(rep.dataset)
    pixels = ds.normalize(ds.train.images).flatten(1)
    index = torch.tensor([int((pixels == row).all(1).nonzero()) for row in x.flatten(1)])
    assert torch.equal(y, true[index])
    assert torch.bincount(y, minlength=10).tolist() == [2] * 10  # balanced by the true classes
    assert not torch.equal(y, dense_train[index])  # the random labels of the same examples would differ


def test_the_labels_follow_the_data_seed_and_not_the_runner(mnist_root, tmp_path):
    hp = DataHparams("mnist", random_labels=1.0)
    by_data_seed = Replicate(ModelHparams(), hp, TRAINING.replace(data_seed=7), seed=0)
    by_seed = Replicate(ModelHparams(), hp, TRAINING, seed=7)
    with pytest.warns(RandomLabelsWarning):
        one = Runner(RunStore(tmp_path / "a"), data_root=mnist_root).training_data(by_data_seed).train.labels
        two = Runner(RunStore(tmp_path / "b"), data_root=mnist_root).training_data(by_seed).train.labels
        other = Runner(RunStore(tmp_path / "c"), data_root=mnist_root).training_data(
            Replicate(ModelHparams(), hp, TRAINING, seed=8)).train.labels
    assert torch.equal(one, two) and not torch.equal(one, other)
    plain = Runner(RunStore(tmp_path / "d"), data_root=mnist_root)
    rep = Replicate(ModelHparams(), DataHparams("mnist"), TRAINING)
    assert plain.training_data(rep) is plain.dataset(rep.dataset)  # no random labels: the dataset itself


def test_the_cli_says_so_in_one_line_and_refuses_a_bad_fraction(mnist_root, tmp_path, capsys):
    common = ["train", "--model", "lenet_300_100", "--dataset", "mnist", "--data-root", str(mnist_root), "--train",
              "1ep", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    assert main([*common, "--random-labels", "1.5", "--root", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "random_labels must be a fraction" in err and not (tmp_path / "bad").exists()
    assert main([*common, "--random-labels", "1.0", "--root", str(tmp_path / "runs")]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "random labels" in line]
    assert notices == ["prunelab: warning: training on random labels: 100% of the 64 training labels (64) redrawn "
                       "uniformly from the 10 classes (Zhang et al. 2017, §2); the test set and the pruning score "
                       "keep the true labels"]
