"""prunelab inside Hugging Face's Trainer and Lightning's Trainer: tiny models from configs, a few CPU steps.

Pruned entries are counted by brute force on the trained weights; the number of mask changes is checked
against the schedule's own ``update_steps``; checkpoints hold the mask and a resumed run continues from it.
"""

import subprocess
import sys

import pytest
import torch

import prunelab

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' Trainer needs it

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from prunelab.integrations import huggingface as hf  # noqa: E402


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        vocab_size=100, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n=32, length=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, length), generator=g)
        self.labels = torch.arange(n) % 2

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def trainer_args(out, steps, **kw):
    kw.setdefault("save_strategy", "no")
    return TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], max_steps=steps,
                             per_device_train_batch_size=8, logging_steps=1000, disable_tqdm=True, seed=0, **kw)


class Spy(TrainerCallback):
    """Records a copy of the callback's mask when training begins and after every step."""

    def __init__(self, callback):
        self.callback, self.begin, self.steps = callback, None, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = self.callback.mask.clone()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[state.global_step] = self.callback.mask.clone()


def train(model, callback, out, steps, resume=None, **kw):
    spy = Spy(callback)
    trainer = Trainer(model=model, args=trainer_args(out, steps, **kw), train_dataset=TokenData(),
                      callbacks=[callback, spy])
    trainer.train(resume_from_checkpoint=resume)
    return spy


def pruned_nonzero(model, mask):
    """Brute force: the pruned entries of every covered tensor that are not exactly 0."""
    params = dict(model.named_parameters())
    return sum(int((params[n].detach()[~keep] != 0).sum()) for n, keep in mask.items())


def test_light_import_pulls_in_no_trainer_library():
    code = ("import sys, prunelab, prunelab.integrations, prunelab.models; "
            "bad = [m for m in ('transformers', 'lightning', 'timm') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("library,module,extra", [
    ("transformers", "huggingface", "huggingface"), ("lightning", "lightning", "lightning")])
def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch, library, module, extra):
    import importlib

    for name in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, f"prunelab.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install prunelab\[{extra}\]") as err:
        importlib.import_module(f"prunelab.integrations.{module}")
    assert "\n" not in str(err.value)


def test_fixed_mask_stays_zero_through_trainer(tmp_path):
    model = tiny_bert()
    mask = prunelab.prune(model, "magnitude", 0.7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = hf.MaskCallback(mask=mask)
    train(model, callback, tmp_path, steps=4)
    assert callback.mask is mask and callback.update_count == 0
    assert pruned_nonzero(model, mask) == 0
    params = dict(model.named_parameters())
    changed = sum(int((params[n].detach()[keep] != before[n][keep]).sum()) for n, keep in mask.items())
    assert changed > 0.9 * mask.num_kept  # the kept weights did train


@pytest.mark.parametrize("schedule", [
    prunelab.SET(sparsity=0.8, every=2, end=8, seed=1),
    prunelab.RigL(sparsity=0.8, every=2, end=8, grow_gradient="step"),
    prunelab.RigL(sparsity=0.8, every=2, end=8),  # after_step: the step's keyword inputs, the model's own loss
], ids=["set", "rigl-step", "rigl-after-step"])
def test_drop_and_grow_changes_the_mask_at_each_update_step(tmp_path, schedule):
    model = tiny_bert()
    callback = hf.MaskCallback(schedule=schedule)
    spy = train(model, callback, tmp_path, steps=7)
    assert schedule.update_steps(7) == [2, 4, 6]  # RigL drops nothing at T_end: end=8 lies past them
    assert callback.update_count == 3
    masks = [spy.begin] + [spy.steps[t] for t in range(1, 8)]
    changed_at = [t for t in range(1, 8) if masks[t] != masks[t - 1]]
    assert changed_at == [2, 4, 6]
    for m in masks[1:]:  # drop and grow keeps each tensor's count
        assert m.layer_counts() == spy.begin.layer_counts()
    assert pruned_nonzero(model, callback.mask) == 0


def test_gradual_magnitude_reaches_its_sparsity(tmp_path):
    model = tiny_bert()
    schedule = prunelab.GradualMagnitude(sparsity=0.75, every=1, start=0, end=4)
    callback = hf.MaskCallback(schedule=schedule)
    spy = train(model, callback, tmp_path, steps=5)
    assert spy.begin.sparsity == 0 and callback.update_count == 4
    assert abs(callback.mask.sparsity - 0.75) < 1e-3
    assert pruned_nonzero(model, callback.mask) == 0


def test_step_gradients_add_up_over_accumulated_micro_batches(tmp_path):
    schedule = prunelab.RigL(sparsity=0.8, every=2, end=6, grow_gradient="step")
    callback = hf.MaskCallback(schedule=schedule)
    model = tiny_bert()
    spy = train(model, callback, tmp_path, steps=4, gradient_accumulation_steps=2)
    assert callback.update_count == len(schedule.update_steps(4)) == 2
    assert spy.steps[2] != spy.steps[1] and pruned_nonzero(model, callback.mask) == 0


def test_mask_and_schedule_are_exclusive():
    with pytest.raises(ValueError, match="either mask"):
        hf.MaskCallback()
    with pytest.raises(ValueError, match="either mask"):
        hf.MaskCallback(mask=prunelab.Mask.ones(tiny_bert()), schedule=prunelab.SET())


def test_checkpoints_hold_the_mask_and_resume_restores_it(tmp_path):
    schedule = prunelab.SET(sparsity=0.8, every=1, end=6, seed=3)
    model = tiny_bert()
    first = hf.MaskCallback(schedule=schedule)
    spy = train(model, first, tmp_path, steps=4, save_strategy="steps", save_steps=2)
    for step in (2, 4):
        saved = prunelab.Mask.load(tmp_path / f"checkpoint-{step}" / hf.CHECKPOINT_MASK_FILE)
        assert saved == spy.steps[step]
    # a fresh model and callback resume at step 2: the mask of step 2, then the same updates as before
    again = hf.MaskCallback(schedule=schedule)
    spy2 = train(tiny_bert(seed=1), again, tmp_path, steps=4, resume=str(tmp_path / "checkpoint-2"),
                 save_strategy="no")
    assert spy2.begin == spy.steps[2]
    assert again.update_count == 2 and spy2.steps[4] == spy.steps[4]


def test_resume_without_a_saved_mask_says_where_it_looked(tmp_path):
    model = tiny_bert()
    train(model, hf.MaskCallback(mask=prunelab.prune(model, "magnitude", 0.5)), tmp_path, steps=2,
          save_strategy="steps", save_steps=2)
    (tmp_path / "checkpoint-2" / hf.CHECKPOINT_MASK_FILE).unlink()
    callback = hf.MaskCallback(schedule=prunelab.SET(sparsity=0.5, every=1, end=4))
    with pytest.raises(FileNotFoundError, match="checkpoint-2"):
        train(tiny_bert(), callback, tmp_path, steps=4, resume=str(tmp_path / "checkpoint-2"))


def test_save_pretrained_round_trip_keeps_the_mask(tmp_path):
    model = tiny_bert()
    mask = prunelab.prune(model, "magnitude", 0.9).apply(model)
    path = hf.save_pretrained(model, tmp_path / "pruned")
    assert path == tmp_path / "pruned" / hf.MASK_FILE and (tmp_path / "pruned" / "config.json").is_file()
    loaded = hf.from_pretrained(BertForSequenceClassification, tmp_path / "pruned")
    assert prunelab.Mask.load(path) == mask
    for (n, p), (n2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == n2 and torch.equal(p, q)
    # the mask is applied again: an optimizer step leaves the pruned weights at exactly 0
    batch = TokenData()[0]
    out = loaded(input_ids=batch["input_ids"][None], labels=batch["labels"][None])
    out.loss.backward()
    torch.optim.SGD(loaded.parameters(), lr=1.0).step()
    assert pruned_nonzero(loaded, mask) == 0


def test_save_pretrained_needs_a_mask_and_from_pretrained_a_mask_file(tmp_path):
    model = tiny_bert()
    with pytest.raises(ValueError, match="no mask is applied"):
        hf.save_pretrained(model, tmp_path / "dense")
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(FileNotFoundError, match="prunelab_mask.pt"):
        hf.from_pretrained(BertForSequenceClassification, tmp_path / "dense")


# ---- Lightning ------------------------------------------------------------------------------------

def lightning_parts():
    pl = pytest.importorskip("lightning.pytorch")
    from prunelab.integrations import lightning as pl_int

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.arange(64) % 2)
            return torch.utils.data.DataLoader(data, batch_size=8)

    def fit(module, callback, steps, ckpt_path=None, **kw):
        masks = {}

        class Spy(pl.Callback):
            def on_fit_start(self, trainer, pl_module):
                masks[0] = callback.mask.clone()

            def on_train_batch_end(self, trainer, pl_module, *args):
                masks[trainer.global_step] = callback.mask.clone()

        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback, Spy()], **kw)
        trainer.fit(module, ckpt_path=ckpt_path)
        return trainer, masks

    return pl_int, Classifier, fit


def test_lightning_fixed_mask_on_a_submodule_stays_zero():
    pl_int, Classifier, fit = lightning_parts()
    module = Classifier()
    mask = prunelab.prune(module.net, "magnitude", 0.6)  # keyed by the bare network's names
    callback = pl_int.MaskCallback(mask=mask, module="net")
    fit(module, callback, steps=5)
    assert pruned_nonzero(module.net, mask) == 0 and callback.update_count == 0


@pytest.mark.parametrize("schedule", [
    prunelab.RigL(sparsity=0.7, every=2, end=8, grow_gradient="step"),  # on_before_backward
    prunelab.RigL(sparsity=0.7, every=2, end=8),  # the step's (x, y) batch after the step
    prunelab.SET(sparsity=0.7, every=2, end=8, seed=2),
], ids=["rigl-step", "rigl-after-step", "set"])
def test_lightning_schedule_changes_the_mask_at_each_update_step(schedule):
    pl_int, Classifier, fit = lightning_parts()
    module = Classifier()
    callback = pl_int.MaskCallback(schedule=schedule)
    _, masks = fit(module, callback, steps=7)
    assert callback.update_count == len(schedule.update_steps(7)) == 3
    assert [t for t in range(1, 8) if masks[t] != masks[t - 1]] == [2, 4, 6]
    assert pruned_nonzero(module, callback.mask) == 0


def test_lightning_checkpoint_holds_the_mask_and_resume_restores_it(tmp_path):
    pl_int, Classifier, fit = lightning_parts()
    schedule = prunelab.SET(sparsity=0.7, every=1, end=10, seed=4)
    trainer, masks = fit(Classifier(), pl_int.MaskCallback(schedule=schedule), steps=3)
    trainer.save_checkpoint(tmp_path / "3.ckpt")
    saved = torch.load(tmp_path / "3.ckpt", weights_only=False)[pl_int.CHECKPOINT_KEY]
    assert prunelab.Mask(saved) == masks[3]
    again = pl_int.MaskCallback(schedule=schedule)
    _, resumed = fit(Classifier(), again, steps=5, ckpt_path=tmp_path / "3.ckpt")
    assert resumed[0] == masks[3] and again.update_count == 2


def test_lightning_step_gradients_add_up_over_accumulated_batches():
    pl_int, Classifier, fit = lightning_parts()
    callback = pl_int.MaskCallback(schedule=prunelab.RigL(sparsity=0.7, every=2, end=8, grow_gradient="step"))
    module = Classifier()
    trainer, masks = fit(module, callback, steps=4, accumulate_grad_batches=2)
    assert trainer.global_step == 4 and callback.update_count == 2
    assert masks[2] != masks[0]

