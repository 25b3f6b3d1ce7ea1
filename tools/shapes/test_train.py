"""The training script's data: what the decoder phase renders and how it weights the loss.

Run: .venv/bin/python -m pytest tools/shapes/test_train.py -q
"""

import copy
import dataclasses
import io
import json
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import model  # noqa: E402
import world  # noqa: E402
from checkpoints import STOP, Checkpoints, Stop  # noqa: E402
from dataset import LATENT_CHUNK, SCENE_INDEX, TRAINING_SCENES, DatasetClips, dataset_chunk, to_video  # noqa: E402
from phase_decoder import DecoderFocus, _check_dataset, decoder_batch  # noqa: E402
from phase_dit import DitOptimizer, dit_batch, hidden_linears, muon_matrices, sigma_shift_at  # noqa: E402
from phase_vae import outline_band, vae_batch  # noqa: E402
from plan import Plan  # noqa: E402
from schedule import learning_rate  # noqa: E402
from train import reproducing_arguments, share_phase_one_only  # noqa: E402


def test_outline_band_is_the_ring_within_two_pixels_of_the_outline_corners_included():
    mask = torch.zeros(1, 1, 2, 16, 16, dtype=torch.bool)
    mask[0, 0, 0, 4:12, 4:12] = True  # an 8x8 square in frame 0; frame 1 is empty
    band = outline_band(mask)[0, 0]
    expected = np.zeros((16, 16), dtype=bool)
    expected[2:14, 2:14] = True  # up to 2 outside the square
    expected[6:10, 6:10] = False  # more than 2 inside it
    assert (band[0].numpy() == expected).all()
    assert band[0, 2, 2] and band[0, 5, 5]  # the corners, outside and inside
    assert not band[1].any()


def fake_run(tmp_path: pathlib.Path, seed: int, clips: int) -> pathlib.Path:
    """A run folder whose latents are a link to another run's, as a warm-started run has."""
    encoder_run = tmp_path / "base"
    (encoder_run / "latents").mkdir(parents=True)
    (encoder_run / "plan.json").write_text(json.dumps({"seed": seed, "dataset_clips": clips}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "latents").symlink_to(pathlib.Path("..") / "base" / "latents")
    (run / "plan.json").write_text(json.dumps({"seed": seed + 1, "dataset_clips": clips}))
    return run


def test_decoder_targets_are_the_encoded_clips_of_the_run_that_encoded_them(tmp_path):
    run = fake_run(tmp_path, seed=5, clips=300)
    dataset = DatasetClips(run)
    assert (dataset.seed, dataset.clips) == (5, 300)  # the encoding run's plan, not the warm-started run's
    for index in (0, 255, 256, 299):  # both chunks, both ends
        scenes, seeds = dataset_chunk(5, 300, index - index % LATENT_CHUNK)
        scene, clip = dataset(index)
        assert scene == scenes[index % LATENT_CHUNK]
        assert (clip == world.render(scene, int(seeds[index % LATENT_CHUNK]))).all()
    held_out = set(world.HELD_OUT)
    assert all(s.combination not in held_out for s in dataset_chunk(5, 300, 0)[0])


def test_decoder_batch_weights_background_object_and_outline():
    plan = Plan(decoder_batch=2, latent_noise=0.0)
    run_scenes = [world.Scene("red", "square", "standing still", "black")] * 2
    data = {
        "scene": torch.zeros(2, dtype=torch.long),
        "mean": torch.randn(2, 16, 5, 8, 8),
        "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16,
    }

    def dataset(index):
        return run_scenes[index], world.render(run_scenes[index], 7 + index)

    z, x, weight = decoder_batch(plan, 0, data, dataset)
    assert z.shape == (2, 16, 5, 8, 8) and x.shape == (2, 3, 17, 64, 64)
    assert all(any(torch.equal(latent, stored) for stored in data["mean"]) for latent in z)  # no noise asked
    values = set(weight.unique().tolist())
    # background, background near the outline, object near the outline, the object's inside
    assert values == {1.0, 1.0 + plan.edge_weight, 1.0 + plan.object_weight + plan.edge_weight, 1.0 + plan.object_weight}
    assert (weight[:, :, :, 0, 0] == 1.0).all()  # the corner pixel is background, far from the object


def test_decoder_batch_hands_the_estimate_each_clips_prompt_and_a_noise_level_up_to_the_maximum():
    plan = Plan(decoder_batch=3, latent_noise=0.0, decoder_sigma_max=0.4)
    scenes = [world.Scene("green", "triangle", "moving left", "gray"), world.Scene("blue", "circle", "growing", "black")]
    data = {"scene": torch.zeros(2, dtype=torch.long), "mean": torch.randn(2, 16, 5, 8, 8), "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16}
    seen = {}

    def estimate(z, prompts, sigma, noise):
        seen.update(z=z, prompts=prompts, sigma=sigma, noise=noise)
        return torch.zeros_like(z)

    z, x, _ = decoder_batch(plan, 3, data, lambda i: (scenes[i], world.render(scenes[i], i)), estimate)
    assert torch.equal(z, torch.zeros_like(z))  # the decoder reads the estimate, not the stored latent
    assert len(seen["prompts"]) == 3 and ((seen["sigma"] >= 0) & (seen["sigma"] <= 0.4)).all()
    for latent, prompt, clip in zip(seen["z"], seen["prompts"], x):
        i = next(i for i in range(2) if torch.equal(latent, data["mean"][i]))
        assert world.parse(prompt) == scenes[i]  # each clip's own prompt
        assert torch.equal(clip, to_video(world.render(scenes[i], i)[None])[0])
    assert seen["noise"].shape == seen["z"].shape


def _scene_data(scenes: list[world.Scene]) -> dict:
    return {
        "scene": torch.tensor([SCENE_INDEX[s] for s in scenes]),
        "mean": torch.randn(len(scenes), 16, 5, 8, 8),
        "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16,
    }


def test_decoder_focus_draws_each_group_in_proportion_to_its_weight():
    scenes = [world.Scene("green", "triangle", "moving up", "black")] * 3 + [world.Scene("red", "circle", "growing", "gray")] * 5
    focus = DecoderFocus(_scene_data(scenes), {"green triangle": 3.0, "red circle": 1.0})
    rng = np.random.default_rng(0)
    draws = [focus.draw(rng) for _ in range(4000)]
    assert set(draws) == set(range(8))  # every clip of a group can be drawn
    assert abs(np.mean([d < 3 for d in draws]) - 0.75) < 0.03  # green triangles: 3 / (3 + 1)
    with pytest.raises(SystemExit, match="red circle"):
        DecoderFocus(_scene_data(scenes), {"green triangle": 1.0})


def test_decoder_batch_with_full_focus_draws_only_the_weighted_group_and_without_it_draws_as_before():
    scenes = [world.Scene("green", "triangle", "moving up", "black")] * 2 + [world.Scene("red", "circle", "growing", "gray")] * 6
    data = _scene_data(scenes)
    dataset = lambda i: (scenes[i], world.render(scenes[i], i))  # noqa: E731
    focus = DecoderFocus(data, {"green triangle": 1.0, "red circle": 0.0})
    for step in range(6):
        z, _, _ = decoder_batch(Plan(decoder_batch=4, latent_noise=0.0, decoder_focus=1.0), step, data, dataset, focus=focus)
        assert all(any(torch.equal(latent, data["mean"][i]) for i in (0, 1)) for latent in z)
    plain = Plan(decoder_batch=4, latent_noise=0.0)
    assert torch.equal(decoder_batch(plain, 2, data, dataset)[0], decoder_batch(plain, 2, data, dataset)[0])


def test_decoder_focus_weighs_the_group_whose_shapes_come_back_wrong(monkeypatch):
    scenes = [world.Scene("green", "triangle", "moving up", "black")] * 2 + [world.Scene("red", "circle", "growing", "gray")] * 2
    data = _scene_data(scenes)
    dataset = lambda i: (scenes[i], world.render(scenes[i], i))  # noqa: E731

    def decode(_vae, z):
        """Draws every red circle exactly and every green triangle as a square."""
        out = []
        for latent in z:
            i = next(i for i in range(4) if torch.equal(latent, data["mean"][i]))
            scene = scenes[i] if scenes[i].color == "red" else dataclasses.replace(scenes[i], shape="square")
            out.append(to_video(world.render(scene, i)[None])[0])
        return torch.stack(out)

    class Vae:
        def eval(self):
            return self

        def train(self):
            return self

    monkeypatch.setattr(model, "decode_unclamped", decode)
    weights = DecoderFocus.measure(Vae(), data, dataset, seed=0, per_group=2)
    assert weights["red circle"] == pytest.approx(0.01)  # the floor: right, but still drawn now and then
    assert weights["green triangle"] > 0.3  # a square's fill ratio (~1) against a triangle's (~0.5)


def test_checkpoints_save_when_due_never_at_the_last_step_and_stop_after_saving(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoints = Checkpoints(path, minutes=60.0, phase="decoder")
    checkpoints.after_step(1, 10, lambda: {"step": 1})
    assert not path.exists()  # not due yet
    checkpoints.minutes = 0.0
    checkpoints.after_step(2, 10, lambda: {"step": 2})
    assert torch.load(path)["step"] == 2
    checkpoints.after_step(10, 10, lambda: {"step": 10})
    assert torch.load(path)["step"] == 2  # the finished phase saves its result, not a checkpoint
    checkpoints.minutes = 60.0
    monkeypatch.setitem(STOP, "signal", "SIGTERM")
    try:
        checkpoints.after_step(3, 10, lambda: {"step": 3})
        raise AssertionError("a requested stop must end the phase")
    except Stop as stop:
        assert "decoder checkpoint at step 3" in str(stop)
    assert torch.load(path)["step"] == 3  # saved before stopping: a rerun resumes at step 3


def test_vae_edge_weight_adds_the_outline_band_and_zero_leaves_the_weights_as_they_were():
    plain = Plan(vae_image_batch=4)
    edged = dataclasses.replace(plain, vae_edge_weight=16.0)
    for step in (0, 3, 2000, 2003):  # image, frame, video and full steps
        kind, x, weight, _ = vae_batch(plain, step)
        _, x2, weight2, _ = vae_batch(edged, step)
        assert torch.equal(x, x2), kind  # the same clips
        assert set(torch.unique(weight).tolist()) == {1.0, 1.0 + plain.object_weight}, kind
        extra = weight2 - weight
        assert set(torch.unique(extra).tolist()) == {0.0, 16.0}, kind
        # The extra weight sits on the outline: on both sides of it, and nowhere deep inside or far outside.
        outline = extra > 0
        assert (outline & (weight > 1)).any() and (outline & (weight == 1)).any(), kind
        assert not outline.all(), kind


def test_sigma_shift_moves_from_its_start_to_its_end_over_phase_two():
    plan = Plan(dit_steps=101, sigma_shift=2.0, sigma_shift_end=1.0)
    assert sigma_shift_at(plan, 0) == 2.0
    assert sigma_shift_at(plan, 50) == pytest.approx(1.5)
    assert sigma_shift_at(plan, 100) == 1.0
    steady = Plan(dit_steps=101, sigma_shift=2.0)
    assert {sigma_shift_at(steady, s) for s in (0, 50, 100)} == {2.0}
    # A higher shift puts the same draws at higher noise: the batch's sigmas fall as the shift falls.
    data = {"scene": torch.zeros(8, dtype=torch.long), "mean": torch.zeros(8, 16, 5, 8, 8)}
    zero, one = torch.zeros(1, 16, 1, 1, 1), torch.ones(1, 16, 1, 1, 1)
    early = dit_batch(dataclasses.replace(plan, dit_batch=64), 0, data, zero, one)[2]
    late_plan = dataclasses.replace(plan, dit_batch=64, sigma_shift=1.0, sigma_shift_end=0.0)
    late = dit_batch(late_plan, 0, data, zero, one)[2]
    assert (early >= late).all() and (early > late).any()


def stand_ins():
    """A text encoder and a transformer with the real models' parameter names and kinds, small, and built without
    the reference stack (transformers is not in `make test`'s environment)."""
    nn = torch.nn
    block = lambda: nn.ModuleDict({  # noqa: E731
        "attn1": nn.ModuleDict({"to_q": nn.Linear(8, 8)}), "norm2": nn.LayerNorm(8),
        "ffn": nn.ModuleDict({"net": nn.ModuleList([nn.Identity(), nn.Identity(), nn.Linear(16, 8)])}),
    })
    transformer = nn.ModuleDict({
        "patch_embedding": nn.Conv3d(4, 8, (1, 2, 2)), "blocks": nn.ModuleList([block() for _ in range(6)]),
        "proj_out": nn.Linear(8, 4),
    })
    layer = nn.ModuleDict({"SelfAttention": nn.ModuleDict({
        "q": nn.Linear(8, 8, bias=False), "relative_attention_bias": nn.Embedding(4, 2)})})
    text_encoder = nn.ModuleDict({
        "shared": nn.Embedding(6, 8),
        "encoder": nn.ModuleDict({"block": nn.ModuleList([nn.ModuleDict({"layer": nn.ModuleList([layer])})])}),
    })
    return text_encoder, transformer


def test_learning_rate_held_then_decayed_over_the_last_share_and_cosine_over_all_without_one():
    base, warmup, total = 1e-3, 200, 10000
    held = [learning_rate(base, warmup, total, s, decay=0.3) for s in range(total)]
    assert held[0] == pytest.approx(base / warmup) and held[warmup - 1] == pytest.approx(base)  # the warmup
    assert set(held[warmup:7001]) == {base}  # held until the last 30% begins
    assert all(a > b for a, b in zip(held[7001:], held[7002:]))  # then falls at every step
    assert held[-1] == pytest.approx(0.1 * base, rel=1e-3)  # to a tenth
    cosine = [learning_rate(base, warmup, total, s) for s in range(total)]
    assert cosine[warmup] == base and all(a > b for a, b in zip(cosine[warmup:], cosine[warmup + 1:]))
    assert cosine[5100] == pytest.approx(base * (0.1 + 0.9 * 0.5)) and cosine[-1] == pytest.approx(0.1 * base, rel=1e-3)


def test_muon_takes_the_hidden_matrices_and_adamw_every_other_parameter():
    text_encoder, transformer = stand_ins()
    muon = DitOptimizer(Plan(dit_optimizer="muon"), text_encoder, transformer)
    adamw, orthogonal = muon.parts
    assert isinstance(orthogonal, torch.optim.Muon)
    under = lambda part: {id(p) for g in part.param_groups for p in g["params"]}  # noqa: E731
    everything = {id(p) for p in list(text_encoder.parameters()) + list(transformer.parameters())}
    assert under(adamw) | under(orthogonal) == everything and not under(adamw) & under(orthogonal)
    names = {id(p): n for n, p in [*transformer.named_parameters(), *text_encoder.named_parameters()]}
    chosen = sorted(names[i] for i in under(orthogonal))
    assert "blocks.0.attn1.to_q.weight" in chosen and "blocks.5.ffn.net.2.weight" in chosen
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in chosen
    # Tables, heads, norms and biases stay with AdamW.
    for kept in ("shared.weight", "proj_out.weight", "patch_embedding.weight", "blocks.0.attn1.to_q.bias",
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "blocks.0.norm2.weight"):
        assert kept not in chosen, kept
    only = DitOptimizer(Plan(), text_encoder, transformer)
    assert len(only.parts) == 1 and under(only.parts[0]) == everything
    with pytest.raises(SystemExit, match="adamw or muon"):
        DitOptimizer(Plan(dit_optimizer="sgd"), text_encoder, transformer)


def test_grouped_muon_takes_torch_muons_steps_and_each_resumes_the_others_checkpoint():
    from grouped_muon import GroupedMuon

    # Square, tall and wide matrices (the tall ones join the wide ones of their shape), and a shape of its own.
    shapes = [(192, 192), (192, 192), (768, 192), (192, 768), (256, 192), (192, 256), (64, 32)]
    torch.manual_seed(0)
    start = [torch.randn(shape) * 0.05 for shape in shapes]
    grads = [[torch.randn(shape) for shape in shapes] for _ in range(4)]

    def optimiser(kind, weights):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        return params, kind(params, lr=1e-3, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")

    def step(params, optimizer, grad):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grad):
            p.grad = g.clone()
        optimizer.step()
        return [p.detach() - b for p, b in zip(params, before)]

    reference, grouped = optimiser(torch.optim.Muon, start), optimiser(GroupedMuon, start)
    for grad in grads[:3]:
        for a, b in zip(step(*reference, grad), step(*grouped, grad)):
            assert a.norm() > 0 and (a - b).norm() <= 1e-2 * a.norm()  # the same bfloat16 numbers, summed in another order
    # Each reads the other's state (the momenta): a run can switch between them and resume.
    for kind, source in ((GroupedMuon, reference), (torch.optim.Muon, grouped)):
        resumed = optimiser(kind, [p.detach() for p in source[0]])
        resumed[1].load_state_dict(copy.deepcopy(source[1].state_dict()))  # a copy, as a checkpoint file is
        continued = optimiser(type(source[1]), [p.detach() for p in source[0]])
        continued[1].load_state_dict(copy.deepcopy(source[1].state_dict()))
        for a, b in zip(step(*continued, grads[3]), step(*resumed, grads[3])):
            assert (a - b).norm() <= 1e-2 * a.norm()
    with pytest.raises(ValueError, match="2D parameters"):  # torch.optim.Muon's own check, at construction
        optimiser(GroupedMuon, [torch.randn(4, 4, 4)])


def test_dit_optimizer_checkpoints_resume_the_same_updates_and_old_adamw_checkpoints_still_load():
    def model_and_optimizer(name):
        torch.manual_seed(0)
        text_encoder, transformer = stand_ins()
        return text_encoder, transformer, DitOptimizer(Plan(dit_optimizer=name), text_encoder, transformer)

    def step(text_encoder, transformer, optimizer):
        loss = sum(p.square().sum() for p in [*text_encoder.parameters(), *transformer.parameters()])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def saved(module) -> dict:  # through torch.save, as a checkpoint: loading shares tensors, not copies
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        return torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)

    first = model_and_optimizer("muon")
    step(*first)
    second = model_and_optimizer("muon")
    second[0].load_state_dict(saved(first[0])), second[1].load_state_dict(saved(first[1]))
    second[2].load_state_dict(saved(first[2]))  # the momenta travel with the checkpoint
    step(*first), step(*second)
    for a, b in zip(first[1].parameters(), second[1].parameters()):
        assert torch.equal(a, b)
    text_encoder, transformer, adamw = model_and_optimizer("adamw")
    step(text_encoder, transformer, adamw)
    old = adamw.parts[0].state_dict()  # what a checkpoint held before the optimiser could be chosen
    model_and_optimizer("adamw")[2].load_state_dict(old)
    with pytest.raises(SystemExit, match="dit_optimizer"):
        model_and_optimizer("muon")[2].load_state_dict(old)


def test_phase_one_is_shared_only_from_a_run_that_trained_it_with_the_same_settings(tmp_path, monkeypatch):
    source = tmp_path / "first"
    (source / "vae").mkdir(parents=True), (source / "latents").mkdir()
    (source / "vae" / "done").write_text("4000\n"), (source / "latents" / "stats.json").write_text("{}")
    plan = Plan(seed=3, dataset_clips=1024, vae_edge_weight=16.0, dit_lr=1e-3)
    (source / "plan.json").write_text(json.dumps(dataclasses.asdict(dataclasses.replace(plan, dit_lr=5e-4))))
    other = tmp_path / "other"
    other.mkdir()
    for differing in ({"vae_edge_weight": 0.0}, {"seed": 4}, {"dataset_clips": 2048}):
        with pytest.raises(SystemExit, match=next(iter(differing))):
            share_phase_one_only(other, source, dataclasses.replace(plan, **differing))
    assert not any(other.iterdir())  # nothing linked
    run = tmp_path / "run"
    run.mkdir()
    share_phase_one_only(run, source, plan)  # phase 2's settings may differ
    assert (run / "vae").resolve() == (source / "vae").resolve()
    assert (run / "latents").resolve() == (source / "latents").resolve()
    with pytest.raises(SystemExit, match="name the run that trained it"):
        share_phase_one_only(tmp_path / "third", run, plan)


def test_the_reproducing_command_leaves_out_the_shared_phase_one_and_the_trial_folder():
    argv = [
        "--run", "x", "--phase-one-from", "single", "--seed", "0", "--phase-one-from=single", "--no-evaluate",
        "--out", "tools/shapes/runs/x/shapes-tiny", "--out=elsewhere", "--dit-steps", "7",
    ]
    assert reproducing_arguments(argv) == ["--run", "x", "--seed", "0", "--dit-steps", "7"]


def test_mkl_intel_paths_are_wanted_on_amd_cpus_only_and_at_most_once():
    import mkl_paths

    amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\n"
    assert mkl_paths.cpu_vendor(amd) == "AuthenticAMD" and mkl_paths.cpu_vendor("") is None
    assert mkl_paths.wanted(amd, {})
    assert not mkl_paths.wanted(intel, {})
    assert not mkl_paths.wanted(amd, {"LD_PRELOAD": str(mkl_paths.LIBRARY)})  # already rerun: never twice
    assert not mkl_paths.wanted(amd, {"SHAPES_MKL_INTEL_PATHS": "0"})


def test_the_mkl_intel_paths_library_builds_and_answers_yes(tmp_path):
    import ctypes

    import mkl_paths

    library = mkl_paths.build(tmp_path / "libmkl_intel_paths.so")
    assert library is not None and library.exists()
    assert ctypes.CDLL(str(library)).mkl_serv_intel_cpu_true() == 1


def test_channels_last_convolutions_change_no_value_and_go_back_to_the_layout_safetensors_saves():
    import model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv3d(8, 4, 3, padding=1))
    x = torch.randn(2, 3, 5, 16, 16)
    with torch.no_grad():
        before = net(x)
        model.conv_layout(net, channels_last=True)
        convolutions = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convolutions)
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)  # float rounding only
    model.conv_layout(net, channels_last=False)
    assert all(m.weight.is_contiguous() for m in convolutions)  # safetensors refuses any other layout
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_bfloat16_products_convert_the_hidden_linears_only_and_keep_float32_weights_and_state():
    import model

    torch.manual_seed(0)
    text_encoder, transformer = stand_ins()
    reference = copy.deepcopy(transformer)
    layers = hidden_linears(text_encoder, transformer)
    weights = {id(p) for p in muon_matrices(text_encoder, transformer)}
    assert len(layers) == 13 and {id(layer.weight) for layer in layers} == weights  # the blocks' and layers' only
    model.bfloat16_products(layers)
    assert all(type(layer) is model.BFloat16Linear for layer in layers)
    assert type(transformer["proj_out"]) is torch.nn.Linear  # the head stays float32
    assert list(transformer.state_dict()) == list(reference.state_dict())
    assert all(p.dtype == torch.float32 for p in transformer.parameters())
    x = torch.randn(32, 8)
    converted, plain = transformer["blocks"][0]["attn1"]["to_q"], reference["blocks"][0]["attn1"]["to_q"]
    out = converted(x)
    assert out.dtype == torch.float32
    assert 0 < (out - plain(x)).abs().max() < 0.05 * plain(x).abs().max()  # rounded, not different
    out.square().mean().backward()
    assert converted.weight.grad is not None and converted.weight.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="not a plain"):
        model.bfloat16_products([converted])


def test_bfloat16_convolutions_keep_the_subclass_its_float32_weights_and_state_and_go_back_exactly():
    import model

    class CausalConv3d(torch.nn.Conv3d):  # like the VAE's WanCausalConv3d: its own padding around the convolution
        def forward(self, x):
            return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0)))

    torch.manual_seed(0)
    net = torch.nn.Sequential(CausalConv3d(3, 8, 3), torch.nn.SiLU(), torch.nn.Conv3d(8, 4, 1))
    head = torch.nn.Conv2d(4, 2, 3, padding=1)
    x = torch.randn(2, 3, 5, 16, 16)
    with torch.no_grad():
        before = net(x)
        image_before = head(before[:, :, 0])
    keys = list(net.state_dict())
    model.conv_precision(net, bfloat16=True)
    model.conv_precision(head, bfloat16=True)
    model.conv_precision(net, bfloat16=True)  # converting twice changes nothing
    assert isinstance(net[0], CausalConv3d) and isinstance(net[0], model.BFloat16Convolution)
    assert type(net[0]).__mro__.count(CausalConv3d) == 1
    assert list(net.state_dict()) == keys and all(p.dtype == torch.float32 for p in net.parameters())
    out = net(x)
    assert out.dtype == torch.float32 and out.shape == before.shape  # the subclass's padding still applies
    assert 0 < (out - before).abs().max() < 0.05 * before.abs().max()  # rounded, not different
    image = head(out[:, :, 0])
    assert 0 < (image - image_before).abs().max() < 0.05 * image_before.abs().max()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    twin = copy.deepcopy(net)  # the classes survive a copy
    assert isinstance(twin[0], model.BFloat16Convolution)
    model.conv_precision(net, bfloat16=False)
    assert type(net[0]) is CausalConv3d and type(net[2]) is torch.nn.Conv3d
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=0, rtol=0)  # float32 again, bit for bit


def test_dataset_check_passes_the_vae_that_encoded_the_latents_in_their_precision_and_stops_another():
    import model

    class StandInVAE(torch.nn.Module):  # encode(video).latent_dist.mode(), as AutoencoderKLWan answers
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv3d(3, 4, kernel_size=(1, 8, 8), stride=(1, 8, 8))

        def encode(self, video):
            mode = self.conv(video)
            return type("Output", (), {"latent_dist": type("Dist", (), {"mode": lambda _: mode})()})()

    scenes = [TRAINING_SCENES[i] for i in (0, 7, 19)]
    clips = np.stack([world.render(scene, seed) for seed, scene in enumerate(scenes)])
    dataset = lambda i: (scenes[i], clips[i])  # noqa: E731
    vae = StandInVAE(seed=1)
    model.conv_precision(vae, bfloat16=True)
    with torch.no_grad():
        encoded = vae.encode(to_video(clips)).latent_dist.mode()  # the whole batch at once, as phase 1 does
    model.conv_precision(vae, bfloat16=False)
    data = {"scene": torch.tensor([SCENE_INDEX[s] for s in scenes]), "mean": encoded}
    with torch.no_grad():
        _check_dataset(Plan(vae_convolutions="bfloat16"), vae, data, dataset)
        assert type(vae.conv) is torch.nn.Conv3d  # back to float32 after the check
        with pytest.raises(SystemExit, match="does not encode to its stored latent"):  # its float32 latents differ
            _check_dataset(Plan(vae_convolutions="float32"), vae, data, dataset)
        with pytest.raises(SystemExit, match="another VAE"):
            _check_dataset(Plan(vae_convolutions="bfloat16"), StandInVAE(seed=2), data, dataset)
        wrong = dict(data, scene=data["scene"].flip(0))
        with pytest.raises(SystemExit, match="another scene"):
            _check_dataset(Plan(vae_convolutions="bfloat16"), vae, wrong, dataset)
