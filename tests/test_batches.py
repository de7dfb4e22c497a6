"""One way in for batches and outputs (prunelab.batches): reading, counting, cutting, moving, feeding.

Expectations come from plain autograd on the model itself and from slicing by hand, never from the
module's own earlier output.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.batches import Batch, as_batches, default_loss, logits, loss


class TwoInputs(nn.Module):
    """forward(a, b, *, scale=None): logits from two inputs, and an optional keyword input."""

    def __init__(self):
        super().__init__()
        self.fa = nn.Linear(5, 7)
        self.fb = nn.Linear(3, 7)
        self.head = nn.Linear(7, 4)

    def forward(self, a, b, scale=None):
        h = torch.tanh(self.fa(a) + self.fb(b))
        if scale is not None:
            h = h * scale
        return self.head(h)


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.body(x), "aux": x.sum()}


def _data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g), torch.rand(n, 1, generator=g) + 0.5,
            torch.randint(0, 4, (n,), generator=g))


def _snip_by_hand(model, loss_of):
    params = dict(model.named_parameters())
    names = ["fa.weight", "fb.weight", "head.weight"]
    grads = torch.autograd.grad(loss_of(), [params[n] for n in names])
    return {n: (g * params[n]).abs().detach() for n, g in zip(names, grads)}


def test_len_split_and_tensor_split_cut_every_per_example_tensor_and_share_the_rest():
    a, b, scale, y = _data(10)
    shared = torch.ones(7)  # not per example: every piece gets it whole
    batch = Batch((a, b), y, {"scale": scale, "bias": shared})
    assert len(batch) == 10
    pieces = batch.split(4)
    assert [len(p) for p in pieces] == [4, 4, 2]
    assert torch.equal(pieces[1].inputs[0], a[4:8]) and torch.equal(pieces[1].inputs[1], b[4:8])
    assert torch.equal(pieces[2].kwargs["scale"], scale[8:]) and torch.equal(pieces[2].targets, y[8:])
    assert all(p.kwargs["bias"] is shared for p in pieces)
    thirds = batch.tensor_split(3)
    assert [len(p) for p in thirds] == [4, 3, 3]
    assert [len(p) for p in Batch.pair(a[:2], y[:2]).tensor_split(3)] == [1, 1]  # empty parts dropped
    assert len(Batch((a,))) == 10  # no targets: counted by the first input


def test_to_casts_floating_inputs_to_the_models_dtype_and_leaves_integer_tensors_alone():
    model = nn.Embedding(9, 3).double()
    ids = torch.tensor([[1, 2], [3, 4]])
    moved = Batch((ids, torch.zeros(2, 2)), torch.tensor([0, 1])).to_model(model)
    assert moved.inputs[0].dtype == torch.int64 and moved.inputs[1].dtype == torch.float64
    assert moved.targets.dtype == torch.int64


def test_forward_with_tensors_equals_the_model_with_those_weights():
    a, b, scale, y = _data(6)
    model = TwoInputs()
    head = model.head.weight.detach().clone()
    batch = Batch((a, b), y, {"scale": scale})
    out = batch.forward(model, {"head.weight": torch.zeros(4, 7)})
    assert torch.equal(out, model.head.bias.expand(6, 4))  # the zero head leaves only its bias
    assert torch.equal(model.head.weight, head)  # the model's own weight is untouched
    assert torch.equal(batch.forward(model), model(a, b, scale=scale))


def test_snip_on_a_model_with_two_inputs_and_a_keyword_input_equals_plain_autograd():
    a, b, scale, y = _data(10)
    torch.manual_seed(0)
    model = TwoInputs()
    batch = Batch((a, b), y, {"scale": scale})
    got = prunelab.score(model, "snip", batch=batch)
    want = _snip_by_hand(model, lambda: F.cross_entropy(model(a, b, scale=scale), y))
    for n, w in want.items():
        torch.testing.assert_close(got[n], w, rtol=1e-6, atol=1e-9)
    # micro-batched (no BatchNorm: exact up to rounding) and as a list of two batches
    micro = prunelab.score(model, "snip", batch=batch, score_batch_size=3)
    halves = prunelab.score(model, "snip", batch=batch.split(5))
    for n, w in want.items():
        torch.testing.assert_close(micro[n], w, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(halves[n], w, rtol=1e-5, atol=1e-8)


def test_an_output_without_logits_needs_a_loss_fn_and_works_with_one():
    torch.manual_seed(0)
    model = DictOutput()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    w = model.body.weight
    (g,) = torch.autograd.grad(F.cross_entropy(model(x)["logits"], y), [w])
    want = (g * w).abs().detach()
    # a mapping with "logits": found by the default loss
    torch.testing.assert_close(prunelab.score(model, "snip", batch=(x, y))["body.weight"], want)
    model.forward = lambda x: {"scores": model.body(x)}
    with pytest.raises(ValueError, match="returned a dict, in which prunelab finds no logits.*pass loss_fn"):
        prunelab.score(model, "snip", batch=(x, y))
    got = prunelab.score(model, "snip", batch=(x, y), loss_fn=lambda out, t: F.cross_entropy(out["scores"], t))
    torch.testing.assert_close(got["body.weight"], want)


def test_as_batches_reads_pairs_batches_and_lists_and_refuses_the_rest_in_one_line():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    assert len(as_batches((x, y), "snip")) == 1
    assert [len(b) for b in as_batches([(x, y), Batch.pair(x[:1], y[:1])], "snip")] == [4, 1]
    with pytest.raises(ValueError, match=r"snip needs data: pass batch=\(inputs, targets\)"):
        as_batches(None, "snip")
    with pytest.raises(ValueError, match="got Tensor"):
        as_batches(torch.zeros(3), "snip")
    with pytest.raises(ValueError, match="as many targets as inputs.*4 inputs and 3 targets"):
        as_batches((x, y[:3]), "grasp")


def test_the_default_loss_is_mean_cross_entropy_and_casts_only_when_asked():
    out, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    assert torch.equal(default_loss(out, y), F.cross_entropy(out, y))
    assert default_loss(out, y, dtype=torch.float32).dtype == torch.float32
    assert torch.equal(default_loss(out, y, reduction="sum"), F.cross_entropy(out, y, reduction="sum"))
    assert logits(out) is out
    assert torch.equal(loss(out, Batch.pair(out, y), lambda o, t: o.sum()), out.sum())


# ---- batches and outputs of any shape (Hugging Face style, tuples, token-level targets) -----------------

class Output(dict):
    """Like transformers' ModelOutput: a mapping whose keys are also attributes."""

    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value


class TinyLM(nn.Module):
    """forward(input_ids, attention_mask=None, labels=None) -> Output(logits (N, T, V), loss when labels)."""

    def __init__(self, vocab=11, width=6, classes=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, classes or vocab)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = torch.tanh(self.mix(self.embed(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        logits = self.out(h)
        loss = None
        if labels is not None:  # a shifted causal-LM loss, as transformers computes it
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return Output(logits=logits, loss=loss)


def _lm_data(n=6, t=5, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    am = (torch.rand(n, t, generator=g) < 0.8).long()
    return ids, am


def test_a_mapping_batch_is_called_as_keywords_and_scored_with_the_models_own_loss():
    torch.manual_seed(0)
    model = TinyLM()
    ids, am = _lm_data()
    got = prunelab.score(model, "snip", batch={"input_ids": ids, "attention_mask": am, "labels": ids})
    w = {"mix.weight": model.mix.weight, "out.weight": model.out.weight}
    own = model(ids, attention_mask=am, labels=ids)["loss"]  # the shifted loss, not a cross-entropy of ours
    grads = torch.autograd.grad(own, list(w.values()))
    for (n, p), g in zip(w.items(), grads):
        torch.testing.assert_close(got[n], (g * p).abs().detach())
    # micro-batched: the same up to rounding (the loss is a mean over equal-length sequences)
    micro = prunelab.score(model, "snip", batch={"input_ids": ids, "attention_mask": am, "labels": ids},
                           score_batch_size=2)
    for n in w:
        torch.testing.assert_close(micro[n], got[n], rtol=1e-4, atol=1e-7)


def test_token_level_targets_take_the_cross_entropy_of_every_token_but_the_ignored_ones():
    torch.manual_seed(0)
    model = TinyLM()
    ids, am = _lm_data()
    targets = ids.clone()
    targets[:, :2] = -100  # transformers' ignore index
    got = prunelab.score(model, "snip", batch=({"input_ids": ids, "attention_mask": am}, targets))
    logits = model(ids, attention_mask=am)["logits"]
    terms = [-torch.log_softmax(logits[i, j], -1)[targets[i, j]] for i in range(ids.shape[0])
             for j in range(ids.shape[1]) if targets[i, j] != -100]
    by_hand = torch.stack(terms).mean()
    (g,) = torch.autograd.grad(by_hand, [model.out.weight])
    torch.testing.assert_close(got["out.weight"], (g * model.out.weight).abs().detach())


def test_tuple_inputs_are_positional_arguments():
    a, b, scale, y = _data(8)
    torch.manual_seed(0)
    model = TwoInputs()
    got = prunelab.score(model, "snip", batch=((a, b), y))
    want = _snip_by_hand(model, lambda: F.cross_entropy(model(a, b), y))
    for n, w in want.items():
        torch.testing.assert_close(got[n], w)
    assert [len(x) for x in as_batches([((a, b), y), ((a[:3], b[:3]), y[:3])], "snip")] == [8, 3]


def test_forward_fn_replaces_the_call_of_the_model():
    a, b, scale, y = _data(8)
    torch.manual_seed(0)
    model = TwoInputs()

    def forward_fn(m, a, b):  # the call the model needs: a keyword input computed from the batch
        return m(a, b, scale=torch.full((len(a), 1), 2.0))

    got = prunelab.score(model, "snip", batch=((a, b), y), forward_fn=forward_fn)
    want = _snip_by_hand(model, lambda: F.cross_entropy(model(a, b, scale=torch.full((8, 1), 2.0)), y))
    for n, w in want.items():
        torch.testing.assert_close(got[n], w)
    with pytest.warns(UserWarning, match="magnitude scores no batch of data: forward_fn is ignored"):
        prunelab.score(model, "magnitude", forward_fn=forward_fn)


def test_grasps_temperature_divides_the_logits_whatever_carries_them():
    torch.manual_seed(0)
    model = TinyLM(classes=4)
    ids, am = _lm_data()
    y = torch.randint(0, 4, (ids.shape[0],))
    pooled = lambda m, input_ids, attention_mask: Output(logits=m(input_ids, attention_mask)["logits"].mean(1))  # noqa: E731
    batch = ({"input_ids": ids, "attention_mask": am}, y)
    got = prunelab.score(model, "grasp", batch=batch, forward_fn=pooled)  # temperature 200 by default
    as_tensor = prunelab.score(model, "grasp", batch=batch,
                               forward_fn=lambda m, **kw: pooled(m, **kw)["logits"])  # the same, as a tensor
    for n in as_tensor:
        torch.testing.assert_close(got[n], as_tensor[n])
    lm = TinyLM()  # an LM that computes its own (shifted) loss from labels
    with pytest.raises(ValueError, match="temperature 200 divides the logits, but the model computes its own loss"):
        prunelab.score(lm, "grasp", batch={"input_ids": ids, "labels": ids})
    seen = []

    def loss_fn(output, targets):
        seen.append(output.logits)
        assert output.loss is None  # computed from the undivided logits: dropped
        return F.cross_entropy(output.logits[:, :-1].reshape(-1, 11), targets[:, 1:].reshape(-1))

    prunelab.score(lm, "grasp", batch={"input_ids": ids, "labels": ids}, loss_fn=loss_fn, temperature=2.0)
    with torch.no_grad():
        full = lm(ids)["logits"]
    torch.testing.assert_close(seen[0].detach(), full / 2.0)
    assert seen[0].grad_fn is not None


class TensorLM(TinyLM):
    def forward(self, input_ids):
        return super().forward(input_ids)["logits"]


class HiddenOnly(TinyLM):
    def forward(self, input_ids):
        return {"hidden": super().forward(input_ids)["logits"]}


def test_synflow_reads_the_logits_of_an_output_object():
    torch.manual_seed(0)
    model = TinyLM(classes=4)
    as_tensor = TensorLM(classes=4)
    as_tensor.load_state_dict(model.state_dict())
    got = prunelab.score(model, "synflow", input_shape=(5,))
    want = prunelab.score(as_tensor, "synflow", input_shape=(5,))
    for n in want:
        torch.testing.assert_close(got[n], want[n])
    with pytest.raises(ValueError, match="synflow feeds an all-ones .* finds no logits"):
        prunelab.score(HiddenOnly(classes=4), "synflow", input_shape=(5,))
