"""Training: recipes, schedule, resume, run folder, and a real end-to-end run."""

import dataclasses
import json
import os

import pytest
import torch

import evaluate
from fingerprinting import detection, embedding, forgery, perturbations, training
from fingerprinting.api import Fingerprinter
from fingerprinting.checkpoints import SAVED_MODELS, load_checkpoint, load_model_config
from fingerprinting.errors import UserError

from published_models import PublishedDecoder, PublishedEncoder


def train_args(data_dir, output_dir, *extra):
    return training.parse_args(["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--cuda", "-1",
                             "--num_workers", "0", *extra])


def test_recipe_switch_sets_published_defaults(tmp_path):
    paper = train_args(tmp_path, tmp_path, "--recipe", "paper")
    assert (paper.lr, paper.l2_loss_await, paper.l2_loss_ramp, paper.l2_loss_weight) == (1e-4, 1000, 3000, 10)
    assert (paper.fingerprint_length, paper.image_resolution, paper.num_epochs, paper.batch_size) == (100, 128, 20, 64)
    assert train_args(tmp_path, tmp_path, "--fingerprint_size", "48").fingerprint_length == 48
    assert train_args(tmp_path, tmp_path, "--recipe", "paper", "--lr", "0.01").lr == 0.01
    assert (paper.lr_tail, train_args(tmp_path, tmp_path).lr_tail) == (0, 0.1)
    assert (paper.ema_decay, train_args(tmp_path, tmp_path).ema_decay) == (0, 0.999)
    robust = train_args(tmp_path, tmp_path, "--augment")
    assert (train_args(tmp_path, tmp_path).target_psnr, robust.target_psnr) == (0, 30.3)


def test_learning_rate_schedules():
    paper, fast = train_args("x", "y", "--recipe", "paper"), train_args("x", "y")
    assert [training.learning_rate(step, 1000, paper) for step in (1, 500, 1000)] == [1e-4] * 3
    assert training.learning_rate(50, 1000, fast) == pytest.approx(1.5e-4)  # warm-up
    assert training.learning_rate(900, 1000, fast) == pytest.approx(3e-4)
    assert training.learning_rate(901, 1000, fast) == pytest.approx(1e-4)  # the last 10 %


def test_published_l2_schedule():
    args = train_args("x", "y", "--recipe", "paper")
    assert training.l2_weight(5000, None, args) == 0  # never activated
    assert training.l2_weight(1000 + 1000, 1000, args) == 0  # still awaiting
    assert training.l2_weight(1000 + 1000 + 1500, 1000, args) == pytest.approx(5)  # half-way up the ramp
    assert training.l2_weight(10 ** 6, 1000, args) == 10


def test_target_psnr_scales_the_l2_weight_towards_the_target():
    args = train_args("x", "y", "--target_psnr", "30")
    assert training.adapt_l2_scale(1.0, 25.0, args) > 1.0 > training.adapt_l2_scale(1.0, 35.0, args)
    assert training.adapt_l2_scale(2.0, 30.0, args) == 2.0
    assert training.adapt_l2_scale(100.0, 0.0, args) == 100.0 and training.adapt_l2_scale(0.1, 60.0, args) == 0.1


def test_target_psnr_raises_the_l2_weight_of_a_run_below_it(tmp_path, sample_folder, monkeypatch):
    monkeypatch.setattr(training, "L2_ACTIVATION_ACCURACY", 0.0)  # the L2 ramp starts at step 1
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "0",
              "--max_steps", "20", "--log_interval", "20", "--l2_loss_ramp", "1", "--l2_loss_weight", "1"]
    training.train(train_args(sample_folder, tmp_path / "held", *common, "--target_psnr", "80"))
    training.train(train_args(sample_folder, tmp_path / "free", *common))
    held, free = (json.loads(open(tmp_path / run / "metrics.jsonl").readline()) for run in ("held", "free"))
    assert free["l2_weight"] == 1 and held["l2_weight"] > 2  # 80 dB is out of reach: the weight only rises


def test_chroma_loss_weight_moves_the_residual_into_brightness(tmp_path, sample_folder, monkeypatch):
    monkeypatch.setattr(training, "L2_ACTIVATION_ACCURACY", 0.0)  # the L2 ramp starts at step 1
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "0",
              "--max_steps", "60", "--log_interval", "20", "--l2_loss_ramp", "1", "--l2_loss_weight", "10"]
    training.train(train_args(sample_folder, tmp_path / "colour", *common))
    training.train(train_args(sample_folder, tmp_path / "grey", *common, "--chroma_loss_weight", "20"))
    colour, grey = ([json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")][-1]
                    for run in ("colour", "grey"))
    assert grey["chroma_l2"] / grey["l2"] < 0.5 * colour["chroma_l2"] / colour["l2"]  # measured 0.050 against 0.138


def test_weight_average_follows_the_trained_weights_at_the_decay():
    trained, averaged = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for step, decay in [(0, 0.1), (10, 0.55), (10 ** 6, 0.9)]:  # early steps: (1 + step) / (10 + step)
        torch.nn.init.zeros_(trained.weight), torch.nn.init.ones_(averaged.weight)
        training.update_average((averaged,), (trained,), step, 0.9)
        assert torch.allclose(averaged.weight, torch.full((2, 2), decay))


def test_bf16_on_cpu_refuses_16x16(tmp_path, sample_folder):
    with pytest.raises(UserError, match="--image_resolution >= 32"):
        training.train(train_args(sample_folder, tmp_path, "--image_resolution", "16", "--bf16", "--max_steps", "1"))


@pytest.mark.parametrize("mode", ["fine_dog", "smooth_dog", "smooth_fine_dog"])
def test_a_run_under_the_forgery_defence_logs_it_and_stores_its_field(tmp_path, sample_folder, monkeypatch, mode):
    monkeypatch.setattr(training, "L2_ACTIVATION_ACCURACY", 0.0)  # the defence starts at step 1
    final, prefix = training.train(train_args(
        sample_folder, tmp_path, "--image_resolution", "16", "--fingerprint_length", "8", "--batch_size", "8",
        "--num_holdout", "4", "--max_steps", "4", "--log_interval", "2", "--modulation", mode,
        "--modulation_mean", "--forgery_loss_weight", "1", "--forgery_scheme_aware", "--forgery_look_alikes",
        "--forgery_dct_copies", "--forgery_look_alike_dct"))
    assert 0 <= final["forged_bit_acc"] <= 1 and 0 <= final["stripped_bit_acc"] <= 1
    config = load_model_config(prefix + "_encoder.pth")
    assert config.modulation == mode and torch.tensor(config.modulation_mean).shape == (16, 16)


def test_a_run_with_its_groups_means_out_says_so_and_embeds_its_folder_less_the_mean(tmp_path, sample_folder,
                                                                                     monkeypatch):
    """--group_mean_out (here with --forgery_scheme_aware, the attacker's field
    without the pair's): the config says folder_mean_residual, so that the
    pair's one-fingerprint embedding takes the mean out, which an additive
    pair trained without it refuses."""
    monkeypatch.setattr(training, "L2_ACTIVATION_ACCURACY", 0.0)
    common = ["--image_resolution", "16", "--fingerprint_length", "8", "--batch_size", "8", "--num_holdout", "4",
              "--max_steps", "2", "--forgery_loss_weight", "1"]
    # A pair without a field trains against the scheme-aware attacker's "dog" field.
    final, with_mean_out = training.train(train_args(sample_folder, tmp_path / "out", *common, "--group_mean_out",
                                                     "--forgery_scheme_aware"))
    assert 0 <= final["forged_bit_acc"] <= 1
    _, additive = training.train(train_args(sample_folder, tmp_path / "kept", *common))
    images = [torch.rand(4, 3, 16, 16)]
    pair = Fingerprinter.load(with_mean_out + "_encoder.pth")
    assert pair.config.folder_mean_residual and pair.fit_residual_mean(images, torch.ones(8)) > 0
    with pytest.raises(UserError, match="--group_mean_out"):
        Fingerprinter.load(additive + "_encoder.pth").fit_residual_mean(images, torch.ones(8))
    decoder_only = [*common, "--decoder_only", "--augment", "--augment_ramp", "1", "--augment_crops_shrunk_back"]
    with pytest.raises(UserError, match="trained with --group_mean_out; add --group_mean_out"):
        training.train(train_args(sample_folder, tmp_path / "decoder", *decoder_only, "--init_from",
                                  with_mean_out + "_encoder.pth"))
    with pytest.raises(UserError, match="not trained with --group_mean_out"):
        training.train(train_args(sample_folder, tmp_path / "decoder", *decoder_only, "--group_mean_out",
                                  "--init_from", additive + "_encoder.pth"))
    # Its decoder retrained on shrunk-back crops, the groups' means kept out: searched by default.
    _, decoder = training.train(train_args(sample_folder, tmp_path / "decoder", *decoder_only, "--group_mean_out",
                                           "--init_from", with_mean_out + "_encoder.pth"))
    searching = Fingerprinter.load(decoder + "_encoder.pth")
    assert searching.config.folder_mean_residual and searching.config.search_crops
    assert searching.detect(torch.rand(2, 3, 16, 16)).bits.shape == (2, 8)


def test_a_step_with_its_groups_means_out_trains_on_images_no_group_average_holds(tmp_path):
    args = train_args(tmp_path, tmp_path, "--image_resolution", "16", "--fingerprint_length", "8", "--batch_size",
                      "8", "--forgery_loss_weight", "1", "--group_mean_out")
    encoder, decoder, config = training.build_models(args)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])
    images = torch.rand(8, 3, 16, 16)
    bits = forgery.grouped_bits(torch.randint(0, 2, (8, 8)).float(), args.fingerprint_groups)
    _, fingerprinted = training.training_step((encoder, decoder, config), optimizer, images, bits, dict(l2=1.0),
                                              args)
    residuals = (fingerprinted - images).tensor_split(args.fingerprint_groups)
    assert all(part.abs().max() > 1e-3 and part.mean(0).abs().max() < 1e-5 for part in residuals)


def test_the_group_mean_loss_teaches_the_encoder_to_leave_the_group_mean_out(tmp_path):
    """--group_mean_loss_weight: the same 40 steps on one batch leave a raw
    group mean (before it is taken out) well below that of a run without."""
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bits = forgery.grouped_bits(torch.randint(0, 2, (8, 8), generator=torch.Generator().manual_seed(1)).float(), 2)

    def raw_group_mean_rms(weight):
        args = train_args(tmp_path, tmp_path, "--image_resolution", "16", "--fingerprint_length", "8",
                          "--batch_size", "8", "--forgery_loss_weight", "1", "--fingerprint_groups", "2",
                          "--group_mean_out", "--group_mean_loss_weight", str(weight))
        encoder, decoder, config = training.build_models(args)
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
        for _ in range(40):
            metrics, _ = training.training_step((encoder, decoder, config), optimizer, images, bits, dict(l2=1.0),
                                                args)
        with torch.no_grad():
            raw = training.encode(encoder, config, bits, images)
        return forgery.group_mean_residuals(images, raw, 2).pow(2).mean().sqrt().item(), metrics

    without, _ = raw_group_mean_rms(0)
    with_loss, metrics = raw_group_mean_rms(100)
    assert metrics["group_mean_rms"] > 0 and with_loss < 0.6 * without  # measured 0.053 against 0.127


@pytest.mark.parametrize("option", ["--forgery_scheme_aware", "--forgery_look_alikes", "--forgery_dct_copies",
                                    "--forgery_look_alike_dct", "--group_mean_out"])
def test_each_defence_option_needs_the_defence(tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        train_args(tmp_path, tmp_path, option)
    assert f"{option} needs --forgery_loss_weight > 0" in capsys.readouterr().err


def test_the_group_mean_loss_needs_the_group_mean_out_and_the_encoder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_args(tmp_path, tmp_path, "--forgery_loss_weight", "1", "--group_mean_loss_weight", "1")
    assert "--group_mean_loss_weight needs --group_mean_out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_args(tmp_path, tmp_path, "--init_from", "cifar10_32_v6", "--decoder_only", "--forgery_loss_weight", "1",
                   "--group_mean_out", "--group_mean_loss_weight", "1")
    assert "trains the encoder" in capsys.readouterr().err


def final_weights(prefix):
    return {**load_checkpoint(prefix + "_encoder.pth"), **load_checkpoint(prefix + "_decoder.pth")}


def test_resume_continues_exactly_where_it_stopped(tmp_path, sample_folder):
    # No lr tail: where it starts depends on --max_steps, which this test changes.
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "4",
              "--lr_tail", "0"]
    _, full = training.train(train_args(sample_folder, tmp_path / "full", *common, "--max_steps", "10"))
    _, first = training.train(train_args(sample_folder, tmp_path / "cut", *common, "--max_steps", "6"))
    final, resumed = training.train(train_args(sample_folder, tmp_path / "cut", *common, "--max_steps", "10",
                                            "--resume"))
    assert resumed == first and final["step"] == 10
    weights, expected = final_weights(resumed), final_weights(full)
    assert all(torch.equal(weights[key], expected[key]) for key in expected)


def test_run_folder_contents(tmp_path, sample_folder):
    args = train_args(sample_folder, tmp_path, "--image_resolution", "16", "--fingerprint_length", "4",
                      "--batch_size", "8", "--max_steps", "4", "--log_interval", "2", "--image_interval", "2")
    _, prefix = training.train(args)
    recorded = json.load(open(tmp_path / "args.json"))
    assert recorded["fingerprint_length"] == 4
    assert recorded["channels_last"] is True  # the CPU default, resolved and recorded
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in metrics] == [2, 4]
    assert {"bit_acc", "bce", "l2", "psnr"} <= set(metrics[0])
    assert os.listdir(tmp_path / "logs") and sorted(os.listdir(tmp_path / "saved_images")) == ["2.png", "4.png"]
    assert os.path.basename(prefix).startswith("stegastamp_4_")
    config = load_model_config(prefix + "_encoder.pth")
    assert (config.centred_inputs, config.resolution, config.fingerprint_length) == (True, 16, 4)
    state = torch.load(prefix + "_optim.pth", weights_only=True)
    assert set(state) >= {"optimizer", "step", "trained"}
    # The checkpoint is the weights' moving average; the state keeps the trained weights.
    trained = state["trained"]["encoder"]["residual.weight"]
    assert not torch.equal(load_checkpoint(prefix + "_encoder.pth")["residual.weight"], trained)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fast"])
def test_end_to_end_train_embed_detect(tmp_path, recipe):
    from fingerprinting.sample_images import write_sample_images

    images = write_sample_images(str(tmp_path / "images"), count=256, size=48)
    final, prefix = training.train(train_args(images, tmp_path / "run", "--image_resolution", "32",
                                           "--fingerprint_length", "16", "--recipe", recipe,
                                           "--max_steps", "300", "--num_holdout", "0"))
    # Our checkpoints load into the published classes.
    PublishedEncoder(32, 3, 16).load_state_dict(torch.load(prefix + "_encoder.pth", weights_only=True))
    PublishedDecoder(32, 3, 16).load_state_dict(torch.load(prefix + "_decoder.pth", weights_only=True))

    embedding.embed_folder(embedding.parse_args(
        ["--encoder_path", prefix + "_encoder.pth", "--data_dir", images, "--output_dir", str(tmp_path / "out"),
         "--cuda", "-1", "--num_workers", "0"]))
    registry = tmp_path / "registry.txt"  # the first 4 images' fingerprints, as 4 "sources"
    registry.write_text("".join(line + "\n" for line in
                                open(tmp_path / "out" / "embedded_fingerprints.txt").read().splitlines()[:4]))
    summary = detection.detect_folder(detection.parse_args(
        ["--decoder_path", prefix + "_decoder.pth", "--data_dir", str(tmp_path / "out" / "fingerprinted_images"),
         "--output_dir", str(tmp_path / "det"), "--cuda", "-1", "--num_workers", "0",
         "--embedded_fingerprints", str(tmp_path / "out" / "embedded_fingerprints.txt"),
         "--registry", str(registry), "--fpr", "0.05"]))
    embedded = open(tmp_path / "out" / "embedded_fingerprints.txt").read().splitlines()
    detected = open(tmp_path / "det" / "detected_fingerprints.txt").read().splitlines()
    assert [line.split()[0] for line in embedded] == sorted(os.listdir(images))
    assert [line.split()[0] for line in detected] == [line.split()[0] for line in embedded]
    assert all(len(line.split()[1]) == 16 for line in embedded + detected)
    matches = sum(a == b for e, d in zip(embedded, detected) for a, b in zip(e.split()[1], d.split()[1]))
    assert matches / (16 * len(embedded)) == pytest.approx(summary["bit_accuracy"])
    assert summary["bit_accuracy"] >= 0.95
    # Registered images are attributed to themselves; the others mostly to nobody.
    attribution = [line.split(",") for line in open(tmp_path / "det" / "attribution.csv").read().splitlines()[1:]]
    assert all(image == owner for image, owner, _ in attribution[:4])
    assert sum(owner == '"unknown"' for _, owner, _ in attribution[4:]) / len(attribution[4:]) >= 0.8
    assert summary["closed_world_accuracy"] == 1.0 and summary["open_world_accuracy"] >= 0.8
    assert (tmp_path / "det" / "attribution_confusion.csv").exists()

    report = evaluate.evaluate(evaluate.parse_args(
        ["--encoder_path", prefix + "_encoder.pth", "--decoder_path", prefix + "_decoder.pth", "--data_dir", images,
         "--output_dir", str(tmp_path / "report"), "--num_images", "64", "--fpr", "1e-3", "--cuda", "-1",
         "--num_workers", "0"]))
    assert report["bit_accuracy"] >= 0.95 and report["detection"]["binomial"]["tpr"] >= 0.8
    assert report["detection"]["binomial"]["measured_fpr"] <= 0.05
    assert report["psnr"] > 10 and 0 < report["ssim"] <= 1
    assert {row["perturbation"] for row in report["robustness"]} == set(perturbations.PERTURBATIONS)
    jpeg = {row["strength"]: row["bit_accuracy"] for row in report["robustness"] if row["perturbation"] == "jpeg"}
    assert jpeg[100] > jpeg[10]
    assert all((tmp_path / "report" / name).exists() for name in ["report.md", "report.json", "robustness.png",
                                                                  "robustness.csv", "per_image.csv"])


def test_streaming_when_the_cache_would_not_fit_matches_cached_training(tmp_path, sample_folder):
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "4",
              "--max_steps", "6"]
    _, cached = training.train(train_args(sample_folder, tmp_path / "cached", *common))
    _, streamed = training.train(train_args(sample_folder, tmp_path / "streamed", *common, "--cache_gb", "0"))
    weights, expected = final_weights(streamed), final_weights(cached)
    assert all(torch.allclose(weights[key], expected[key], atol=1e-6) for key in expected)


def test_stop_at_bit_acc_ends_training_at_the_first_logged_step_that_reaches_it(tmp_path, sample_folder):
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "0",
              "--max_steps", "10", "--log_interval", "4"]
    final, _ = training.train(train_args(sample_folder, tmp_path / "early", *common, "--stop_at_bit_acc", "0.01"))
    assert final["step"] == 4  # the first logged step; any batch accuracy passes 0.01
    final, _ = training.train(train_args(sample_folder, tmp_path / "never", *common, "--stop_at_bit_acc", "1.01"))
    assert final["step"] == 10


def test_init_from_a_shipped_model_starts_where_it_left_off(tmp_path, sample_folder):
    # A learning rate too small to move the weights: what is measured is the starting point.
    common = ["--image_resolution", "32", "--fingerprint_length", "100", "--batch_size", "8", "--num_holdout", "8",
              "--max_steps", "1", "--lr", "1e-12"]
    initialised, prefix = training.train(train_args(sample_folder, tmp_path / "init", *common,
                                                 "--init_from", "cifar10_32"))
    scratch, _ = training.train(train_args(sample_folder, tmp_path / "scratch", *common))
    assert initialised["heldout_bit_acc"] >= 0.95 > 0.7 > scratch["heldout_bit_acc"]
    shipped = final_weights(os.path.join(SAVED_MODELS, "cifar10_32"))
    weights = final_weights(prefix)
    assert all(torch.allclose(weights[key], shipped[key], atol=1e-6) for key in shipped)
    assert load_model_config(prefix + "_encoder.pth").centred_inputs


def test_init_from_an_encoder_path_takes_its_pair_and_meaning(tmp_path, sample_folder):
    common = ["--image_resolution", "16", "--fingerprint_length", "4", "--batch_size", "8", "--num_holdout", "0",
              "--max_steps", "2"]
    _, source = training.train(train_args(sample_folder, tmp_path / "source", *common, "--recipe", "paper"))
    _, prefix = training.train(train_args(sample_folder, tmp_path / "tuned", *common, "--lr", "1e-12",
                                       "--init_from", source + "_encoder.pth"))
    weights, expected = final_weights(prefix), final_weights(source)
    assert all(torch.allclose(weights[key], expected[key], atol=1e-6) for key in expected)
    assert not load_model_config(prefix + "_encoder.pth").centred_inputs  # the source's meaning, not the recipe's


def test_decoder_only_keeps_the_pairs_encoder_and_encoding(tmp_path, sample_folder):
    common = ["--image_resolution", "32", "--fingerprint_length", "100", "--batch_size", "8", "--num_holdout", "8",
              "--max_steps", "3", "--lr", "1e-3", "--init_from", "cifar10_32_v4", "--decoder_only"]
    final, prefix = training.train(train_args(sample_folder, tmp_path / "decoder", *common))
    source = os.path.join(SAVED_MODELS, "cifar10_32_v4")
    shipped_encoder, encoder = load_checkpoint(source + "_encoder.pth"), load_checkpoint(prefix + "_encoder.pth")
    assert all(torch.equal(encoder[key], shipped_encoder[key]) for key in shipped_encoder)
    shipped_decoder, decoder = load_checkpoint(source + "_decoder.pth"), load_checkpoint(prefix + "_decoder.pth")
    assert not all(torch.equal(decoder[key], shipped_decoder[key]) for key in shipped_decoder)
    assert load_model_config(prefix + "_encoder.pth") == load_model_config(source + "_encoder.pth")
    assert final["heldout_bit_acc"] > 0.9


def test_a_decoder_trained_on_shrunk_back_crops_is_read_searching_them(tmp_path, sample_folder):
    """--augment_crops_shrunk_back: the new decoder's config turns --search_crops on by default."""
    common = ["--image_resolution", "32", "--fingerprint_length", "100", "--batch_size", "8", "--num_holdout", "8",
              "--max_steps", "3", "--lr", "1e-3", "--init_from", "cifar10_32_v4", "--decoder_only", "--augment",
              "--augment_ramp", "1", "--augment_crops_shrunk_back"]
    _, prefix = training.train(train_args(sample_folder, tmp_path / "decoder", *common))
    source = load_model_config(os.path.join(SAVED_MODELS, "cifar10_32_v4") + "_encoder.pth")
    assert load_model_config(prefix + "_decoder.pth") == dataclasses.replace(source, search_crops=True)
    assert Fingerprinter.from_paths(None, prefix + "_decoder.pth").config.search_crops


@pytest.mark.parametrize("option", ["--augment_crops_shrunk_back", "--augment_chains"])
def test_augmentation_options_need_augmentation(tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        train_args(tmp_path, tmp_path, option)
    assert f"{option} needs --augment" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ([], "--decoder_only needs --init_from"),
    (["--init_from", "cifar10_32_v4", "--modulation", "dog"], "leave out --modulation"),
    (["--init_from", "cifar10_32_v4", "--chroma_loss_weight", "1"], "--chroma_loss_weight"),
])
def test_decoder_only_refuses_what_it_cannot_keep(tmp_path, extra, message, capsys):
    with pytest.raises(SystemExit):
        train_args(tmp_path, tmp_path, "--decoder_only", *extra)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--image_resolution", "16"], "32x32, 100-bit"),
    (["--image_resolution", "32", "--fingerprint_length", "48"], "this run is 32x32, 48 bits"),
])
def test_init_from_a_mismatched_pair_is_refused(tmp_path, sample_folder, extra, message):
    with pytest.raises(UserError, match=message):
        training.train(train_args(sample_folder, tmp_path, "--max_steps", "1", "--init_from", "cifar10_32", *extra))


def test_init_from_an_unknown_name_is_refused(tmp_path, sample_folder):
    with pytest.raises(UserError, match="neither a shipped model"):
        training.train(train_args(sample_folder, tmp_path, "--max_steps", "1", "--init_from", "no_such_model"))
