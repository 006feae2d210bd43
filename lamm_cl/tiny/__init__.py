"""Tinyworld and the tiny CLIP pretrained on it.

- :mod:`lamm_cl.tiny.world`: 32-pixel pictures of coloured shapes with captions from a small
  vocabulary, drawn from a seed, and the benchmark of ``dataset: tinyworld`` (a shape's colour, under a
  warm lamp and in a shifted style);
- :mod:`lamm_cl.tiny.pretrain`: ``python -m lamm_cl.tiny pretrain --out FILE`` trains lamm-tiny
  from scratch on that world with open_clip's contrastive loss, deterministically on CPU;
- ``lamm-tiny-tinyworld.pt``: the weights it made, loaded by ``model: {arch: lamm-tiny,
  pretrained: tinyworld}``.

Nothing is imported here, so ``import lamm_cl.tiny`` stays cheap.
"""
