"""Packed training: every question of an image in one forward equals one forward per question."""
import pytest
import torch

from tokenfocus.fastscore import naive_label_logits
from tokenfocus.infer import label_logit_table
from tokenfocus.packed import pack_batch, packed_label_logits, segment_mask
from tokenfocus.questions import ELEMENT, TOTAL
from tokenfocus.train import token_focus_loss

from test_fastscore import BASES, image_questions, load, make_images, randomise


@pytest.fixture(scope="module", params=sorted(BASES))
def sharp(request):
    a = load(request.param)
    randomise(a.model)
    return a


def _inputs():
    images, questions = make_images(), image_questions()
    keep = [i for i, q in enumerate(questions) if q]
    return [images[i] for i in keep], [questions[i] for i in keep]


def _tasks(questions):
    return torch.tensor([0 if j == 0 else 1 for qs in questions for j in range(len(qs))])


def test_segment_mask_sees_prefix_and_own_segment_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    allowed = segment_mask(seg, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [True, True, True, True, False, False, False]
    assert allowed[5].tolist() == [True, True, False, False, True, True, False]
    assert allowed[6, :2].all() and allowed[6, 6] and not allowed[6, 2:6].any()


def test_packed_logits_equal_one_forward_per_question(sharp):
    images, questions = _inputs()
    ids, _ = label_logit_table(sharp)
    sharp.model.eval()
    with torch.no_grad():
        packed = packed_label_logits(sharp.model, sharp.prepare(pack_batch(sharp, images, questions)), ids)
    naive = torch.cat(naive_label_logits(sharp, images, questions, ids))
    assert packed.shape == naive.shape
    assert torch.allclose(packed, naive, atol=1e-4, rtol=1e-4), (packed - naive).abs().max()


def test_packed_loss_and_gradients_equal_unpacked(sharp):
    images, questions = _inputs()
    ids, cols = label_logit_table(sharp)
    task = _tasks(questions)
    gen = torch.Generator().manual_seed(0)
    target = torch.where(task == 0, 1 + 4 * torch.rand(len(task), generator=gen), torch.rand(len(task), generator=gen))
    std = torch.zeros(len(task))
    model = sharp.model.train()

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed = token_focus_loss(packed_label_logits(model, sharp.prepare(pack_batch(sharp, images, questions)), ids),
                              task, target, std, cols, "mse")
    g_packed = grads(packed)
    flat_images = [im for im, qs in zip(images, questions) for _ in qs]
    flat_q = [q for qs in questions for q in qs]
    from tokenfocus.loss import answer_label_logits
    naive = token_focus_loss(answer_label_logits(model, sharp.prepare(sharp.encode(flat_images, flat_q)), ids),
                             task, target, std, cols, "mse")
    g_naive = grads(naive)
    model.eval()
    assert abs(packed.item() - naive.item()) < 1e-5
    assert set(g_packed) == set(g_naive)
    worst = max((g_packed[n] - g_naive[n]).abs().max().item() for n in g_naive)
    assert worst < 1e-5, worst


def test_no_segment_sees_another(sharp):
    """Changing one question's tokens leaves every other question's label logits unchanged."""
    images, questions = _inputs()
    ids, _ = label_logit_table(sharp)
    changed = [list(qs) for qs in questions]
    changed[0][1] = changed[0][1].replace("circle", "heart purple")
    sharp.model.eval()
    with torch.no_grad():
        a = packed_label_logits(sharp.model, sharp.prepare(pack_batch(sharp, images, questions)), ids)
        b = packed_label_logits(sharp.model, sharp.prepare(pack_batch(sharp, images, changed)), ids)
    moved = (a - b).abs().amax(dim=1)
    assert moved[1] > 1e-2                       # the changed question itself
    # Others move by float rounding only (another sequence length changes the summation order);
    # a segment that saw another would move by 0.1-1 with these weights.
    assert torch.cat([moved[:1], moved[2:]]).max() < 1e-4


def test_element_questions_share_their_instruction_as_a_stem(sharp):
    images, questions = _inputs()
    batch = pack_batch(sharp, images, questions)
    parents = batch["segment_parent"][0]
    seg = batch["segment_ids"][0]
    n_questions = len(questions[0])
    # One stem for the element questions: more segments than questions, elements under it.
    assert int(seg.max()) == n_questions + 1 and int((parents > 0).sum()) == n_questions - 1
    stem = int(parents[parents > 0][0])
    assert int((seg == stem).sum()) >= 2
    # A question's own tokens are counted on from the stem, as in its own forward.
    first_tail = int((seg == stem + 1).nonzero()[0])
    assert int(batch["text_offset"][0, first_tail]) == int((seg == stem).sum())
