"""docs/method.md §4 DiT input layout [target | preceding clean latents]: loss and sampler agree on it."""

import numpy as np
import torch

from mirage_model.generation import GenerationConfig, MirageGenerator
from mirage_model.geometry.trajectory import pan_and_return
from mirage_model.model import MirageTransformer, build_transformer
from mirage_model.model.loss import flow_matching_loss


def test_context_frames_are_clean_timestep_zero_and_outside_the_loss():
    model = MirageTransformer.from_backbone(build_transformer("tiny"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 48, 3, 4, 6, generator=g)
    context = torch.randn(1, 48, 2, 4, 6, generator=g)
    text = torch.randn(1, 8, model.config.text_dim, generator=g)
    cond = torch.randn(1, 49, 3, 4, 6, generator=g)
    loss, aux = flow_matching_loss(model, x0, text, cond, torch.Generator().manual_seed(1), text_dropout=0.0,
                                   return_aux=True, context=context)
    tokens = (4 // 2) * (6 // 2)
    assert aux["pred"].shape[2] == 5  # target 3 + context 2 go through the model
    assert torch.equal(aux["timestep"][:, -2 * tokens:], torch.zeros(1, 2 * tokens))
    assert torch.equal(aux["x"][:, :, 3:].float(), context)  # never noised
    # The loss is computed on target frames 1..2 only: recompute it from the aux tensors.
    ref = torch.nn.functional.mse_loss(aux["pred"][:, :, 1:3].float(), aux["target"][:, :, 1:])
    torch.testing.assert_close(loss, ref)
    loss.backward()


def test_preceding_context_changes_later_chunks_only():
    gen = MirageGenerator.from_preset("tiny", seed=0)
    size = (64, 96)
    traj = pan_and_return(65, yaw_degrees=30.0, translation=(0.3, 0.0, 0.0), image_size=size)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    # A non-zero branch so the context's conditioning matters too.
    with torch.no_grad():
        for blk in gen.transformer.branch.blocks:
            blk.proj_out.weight.normal_(0, 0.02)
    runs = {}
    for p in (0, 2):
        cfg = GenerationConfig(steps=2, memory="latent", seed=3, preceding=p, progress=False)
        runs[p] = gen.generate(image, "a room", traj, cfg, first_depth=np.full(size, 2.0, np.float32)).frames
    assert np.array_equal(runs[0][:33], runs[2][:33])  # chunk 1 has no history
    assert not np.array_equal(runs[0][33:], runs[2][33:])  # chunk 2 sees the preceding latents
