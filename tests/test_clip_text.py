"""The text tower driven from embeddings, cut after the longest EOT, equals open_clip's encode_text."""
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
