"""The networks: shapes, ranges, save/reload, and published-key compatibility."""

import pytest
import torch

from models import StegaStampDecoder, StegaStampEncoder, check_resolution

from published_models import PublishedDecoder, PublishedEncoder


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("length", [1, 16, 100])
def test_shapes_and_ranges(resolution, length):
    encoder = StegaStampEncoder(resolution, 3, length)
    decoder = StegaStampDecoder(resolution, 3, length)
    images = torch.rand(2, 3, resolution, resolution)
    bits = torch.randint(0, 2, (2, length)).float()
    fingerprinted = encoder(bits, images)
    assert fingerprinted.shape == images.shape
    assert 0 <= fingerprinted.min() and fingerprinted.max() <= 1
    assert decoder(fingerprinted).shape == (2, length)



def test_channels_last_input_stays_channels_last_with_same_output():
    """The fingerprint plane follows the image's layout, so no convolution
    pays a layout copy (a mixed cat falls back to NCHW)."""
    encoder = StegaStampEncoder(32, 3, 16)
    images, bits = torch.rand(4, 3, 32, 32), torch.randint(0, 2, (4, 16)).float()
    expected = encoder(bits, images)
    encoder = encoder.to(memory_format=torch.channels_last)
    layouts = []
    for conv in (encoder.conv1, encoder.conv9):  # the two fed by the fingerprint plane
        conv.register_forward_pre_hook(
            lambda _, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    output = encoder(bits, images.contiguous(memory_format=torch.channels_last))
    assert layouts == [True, True]
    assert torch.allclose(output, expected, atol=1e-5)

@pytest.mark.parametrize("resolution", [0, 8, 24, 48, 100])
def test_rejects_bad_resolutions(resolution):
    with pytest.raises(ValueError, match="power of two"):
        check_resolution(resolution)


def test_save_reload_gives_identical_outputs(tmp_path):
    encoder, decoder = StegaStampEncoder(32, 3, 8), StegaStampDecoder(32, 3, 8)
    torch.save(encoder.state_dict(), tmp_path / "e.pth")
    torch.save(decoder.state_dict(), tmp_path / "d.pth")
    encoder2, decoder2 = StegaStampEncoder(32, 3, 8), StegaStampDecoder(32, 3, 8)
    encoder2.load_state_dict(torch.load(tmp_path / "e.pth", weights_only=True))
    decoder2.load_state_dict(torch.load(tmp_path / "d.pth", weights_only=True))
    images, bits = torch.rand(2, 3, 32, 32), torch.randint(0, 2, (2, 8)).float()
    assert torch.equal(encoder(bits, images), encoder2(bits, images))
    assert torch.equal(decoder(images), decoder2(images))


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_published_state_dicts_load_both_ways_with_same_outputs(resolution):
    torch.manual_seed(0)
    published_encoder = PublishedEncoder(resolution, 3, 100)
    published_decoder = PublishedDecoder(resolution, 3, 100)
    encoder, decoder = StegaStampEncoder(resolution, 3, 100), StegaStampDecoder(resolution, 3, 100)
    assert set(encoder.state_dict()) == set(published_encoder.state_dict())
    assert set(decoder.state_dict()) == set(published_decoder.state_dict())
    encoder.load_state_dict(published_encoder.state_dict(), strict=True)
    decoder.load_state_dict(published_decoder.state_dict(), strict=True)
    images, bits = torch.rand(2, 3, resolution, resolution), torch.randint(0, 2, (2, 100)).float()
    torch.testing.assert_close(encoder(bits, images), published_encoder(bits, images))
    torch.testing.assert_close(decoder(images), published_decoder(images))

    # ... and ours into theirs.
    torch.manual_seed(1)
    ours = StegaStampEncoder(resolution, 3, 100), StegaStampDecoder(resolution, 3, 100)
    published_encoder.load_state_dict(ours[0].state_dict(), strict=True)
    published_decoder.load_state_dict(ours[1].state_dict(), strict=True)
    torch.testing.assert_close(published_encoder(bits, images), ours[0](bits, images))
    torch.testing.assert_close(published_decoder(images), ours[1](images))


@pytest.mark.parametrize("resolution", [32, 64])
def test_widest_activation_is_the_largest_tensor_a_forward_pass_makes(resolution):
    """folders.sub_batch_size relies on it to keep CPU activations under glibc's mmap threshold."""
    encoder, decoder = StegaStampEncoder(resolution, 3, 8), StegaStampDecoder(resolution, 3, 8)
    for model, inputs in ((encoder, (torch.zeros(2, 8), torch.rand(2, 3, resolution, resolution))),
                          (decoder, (torch.rand(2, 3, resolution, resolution),))):
        sizes = []
        layers = [layer for layer in model.modules() if not list(layer.children())]
        hooks = [layer.register_forward_hook(lambda _, args, output: sizes.extend(
                 [args[0].numel() // 2, output.numel() // 2])) for layer in layers]
        model(*inputs)
        for hook in hooks:
            hook.remove()
        assert max(sizes) == model.widest_activation()
