"""The text tower driven from embeddings, cut after the longest EOT, equals open_clip's encode_text."""
import pytest
import torch

from lamm_cl.model.prompts import ClassPrompts, PromptEncoder

TEXTS = ["a photo of a zero.", "a photo of the number seven, a type of handwritten digit.", "x"]


def test_eot_cut_matches_open_clip_encode_text(tiny_clip):
    ours = tiny_clip.encode_text(TEXTS)
    ref = tiny_clip.model.encode_text(tiny_clip.tokenizer(TEXTS))  # full 77-token context
    assert tiny_clip.tokenize(TEXTS).ids.shape[1] < 77
    rel = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert float(rel.max()) < 1e-5


def test_prompt_encoder_with_words_equals_plain_prompts(tiny_clip):
    names = ["zero", "aquarium fish", "one"]
    prompts = ClassPrompts(tiny_clip, names, "a photo of a {}.")
    ours = PromptEncoder(tiny_clip, prompts).encode([2, 0, 1])
    ref = tiny_clip.model.encode_text(tiny_clip.tokenizer([f"a photo of a {n}." for n in ["one", "zero", "aquarium fish"]]))
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_splicing_the_original_embeddings_changes_nothing(tiny_clip):
    names = ["aquarium fish", "zero"]
    prompts = ClassPrompts(tiny_clip, names, "a photo of a {}.")
    enc = PromptEncoder(tiny_clip, prompts)
    words = tiny_clip.model.token_embedding.weight
    labels = {0: words[torch.tensor(prompts.name_ids[0][:1])]}
    assert torch.allclose(enc.encode([0, 1], labels=labels), enc.encode([0, 1]), atol=1e-6)
    labels = {0: torch.zeros(1, tiny_clip.token_width)}
    assert not torch.allclose(enc.encode([0], labels=labels), enc.encode([0]), atol=1e-4)


def test_class_prompts_lay_out_sos_prefix_name_suffix_eot(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["red", "aquarium fish"], "a photo of a {}.")
    full = tiny_clip.tokenizer(["a photo of a red.", "a photo of a aquarium fish."])  # the plain prompts
    assert prompts.template == "a photo of a {}." and len(prompts) == 2
    assert prompts.prefix_ids == tiny_clip.token_ids("a photo of a") and prompts.prefix_len == 4
    assert prompts.name_ids == [tiny_clip.token_ids("red"), tiny_clip.token_ids("aquarium fish")]
    assert [len(n) for n in prompts.name_ids] == [1, 2]
    assert prompts.name_start == 5  # SOS + four prefix tokens
    assert prompts.eot.tolist() == [7, 8]
    assert prompts.ids.dtype == torch.long and prompts.ids.shape == (2, 9)
    assert torch.equal(prompts.ids[1], full[1, :9])
    assert torch.equal(prompts.ids[0, :8], full[0, :8]) and int(prompts.ids[0, 8]) == 0  # zero-padded


def test_class_prompts_without_prefix_or_suffix(tiny_clip):
    bare = ClassPrompts(tiny_clip, ["red"], " {} ")
    assert (bare.prefix_ids, bare.prefix_len, bare.name_start) == ([], 0, 1)
    assert bare.ids.tolist() == [[tiny_clip.sos_id, *tiny_clip.token_ids("red"), tiny_clip.eot_id]]
    tail = ClassPrompts(tiny_clip, ["red"], "{} shape")
    assert tail.prefix_len == 0 and tail.eot.tolist() == [3]
    assert tail.ids[0, 2] == tiny_clip.token_ids("shape")[0]


def test_class_prompts_refuse_bad_templates_empty_names_and_overlong_prompts(tiny_clip):
    for template in ("a photo of a red", "a {} or a {}"):
        with pytest.raises(ValueError) as err:
            ClassPrompts(tiny_clip, ["red"], template)
        assert str(err.value) == f"template must contain exactly one '{{}}': {template!r}"
    with pytest.raises(ValueError) as err:
        ClassPrompts(tiny_clip, ["red", ""], "a {}.")
    assert str(err.value) == "class 1 has an empty name"
    ClassPrompts(tiny_clip, ["red " * 75], "{}")  # SOS + 75 + EOT = 77 tokens: fits exactly
    with pytest.raises(ValueError) as err:  # (a name alone is cut to fit by the tokenizer; the template is not)
        ClassPrompts(tiny_clip, ["red", "red " * 75], "a photo of a {}.")
    assert str(err.value) == "a prompt is 82 tokens, longer than CLIP's context of 77"


def test_word_embeddings_are_cut_after_the_longest_eot_of_the_classes_asked(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["red", "aquarium fish"], "a photo of a {}.")
    enc = PromptEncoder(tiny_clip, prompts)
    short = enc.word_embeddings([0])
    assert short.shape == (1, 8, 64)
    assert torch.equal(short[0], tiny_clip.model.token_embedding.weight[prompts.ids[0, :8]])
    assert enc.word_embeddings([0, 1]).shape == (2, 9, 64)


def test_a_context_replaces_the_template_prefix_of_every_prompt(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["red", "aquarium fish"], "a photo of a {}.")
    enc = PromptEncoder(tiny_clip, prompts)
    words = tiny_clip.model.token_embedding.weight
    own = words[torch.tensor(prompts.prefix_ids)]
    assert torch.allclose(enc.encode([1, 0], context=own), enc.encode([1, 0]), atol=1e-5)
    # a context made of other words is the prompt with those words
    other = words[torch.tensor(tiny_clip.token_ids("a drawing of the"))]
    want = tiny_clip.encode_text(["a drawing of the aquarium fish.", "a drawing of the red."])
    assert torch.allclose(enc.encode([1, 0], context=other), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError) as err:
        enc.encode([0], context=own[:3])
    assert str(err.value) == "context has 3 vectors, the template prefix 4 tokens"


def test_label_vectors_replace_the_first_name_pieces_only(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["red", "aquarium fish"], "a photo of a {}.")
    enc = PromptEncoder(tiny_clip, prompts)
    words = tiny_clip.model.token_embedding.weight
    blue = words[torch.tensor(tiny_clip.token_ids("blue"))]
    got = enc.encode([0, 1], labels={1: blue})  # class 1's first piece only; class 0 keeps its words
    want = tiny_clip.encode_text(["a photo of a red.", "a photo of a blue fish."])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    both = words[torch.tensor(tiny_clip.token_ids("green"))]
    got = enc.encode([1, 0], labels={0: both, 1: words[torch.tensor(tiny_clip.token_ids("big shape"))]})
    want = tiny_clip.encode_text(["a photo of a big shape.", "a photo of a green."])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
