"""Fingerprinting from Python: load a pair by name, embed, detect.

    from fingerprinting import Fingerprinter
    fp = Fingerprinter.load("celeba_64_robust", device="cpu")
    marked = fp.embed(images, "0110...")                         # same type and sizes as given
    result = fp.detect(marked, fingerprint="0110...", fpr=1e-6)  # .bits .matching .p_value .detected

Images are a PIL image, a list of them (any sizes), or a float tensor
b c h w in [0, 1]. At the model's own size `embed` is the plain encoder and
`detect` the plain decoder; other sizes go through the residual method
(resizing.py). The command-line scripts are built on this class.
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from fingerprinting import crop_search, data, modulation, resizing
from fingerprinting.bits import (
    binomial_p_values,
    bit_accuracy,
    bits_from_logits,
    matching_bits,
    max_tampered_matching_bits,
    min_matching_bits,
    parse_bits,
)
from fingerprinting.checkpoints import (
    decode,
    encode,
    load_decoder,
    load_encoder,
    load_model_config,
    model_pair_paths,
)
from fingerprinting.errors import UserError

BATCH_SIZE = 64  # images per network call (CPUs split it further: sub_batch_size)

# glibc hands out every block above 32 MB as a fresh mapping that the kernel
# zero-fills page by page, and unmaps it when freed: at 128 px a batch of 64
# through the encoder took half a million page faults. Sub-batches whose
# largest activation stays under that size reuse the heap instead: 9,800
# faults, the encoder 1.7x faster at 128 px, the same outputs. 32 px batches
# of 64 are not split.
ACTIVATION_BYTES = 24 * 2**20

# Read-back: an image whose size differs from the model's loses part of its
# residual's fine detail on the way (enlarged, then shrunk again to be read).
# Textured scenes lose the most: with celeba_64_native, 4 % of LSUN bedrooms
# read back below 0.95 of their bits as saved, while every one reads 0.98 or
# more at the model's size. Where the decoder is at hand, each such image is
# read back as detection will read it and, below MIN_READ_BACK of its bits,
# embedded again at the next of READ_BACK_BOOSTS x the strength: the PSNR
# cost falls on the few images that need it (docs/native_size.md).
MIN_READ_BACK = 0.99
READ_BACK_BOOSTS = (1.1, 1.2, 1.3, 1.4, 1.5)


@dataclass
class Detection:
    """What `Fingerprinter.detect` read from b images.

    bits: b L uint8, the decoded fingerprints. Given the expected
    fingerprint: matching (b, int64) bits equal to it, p_value (b, float64)
    of that many matches on a clean image, detected (b, bool) where the
    p-value is at most the FPR, tampered (b, bool) where so few bits match
    that a clean image would do so just as rarely (an inverted fingerprint).
    upscaled (b, bool): the image was smaller than the model's size.
    """

    bits: torch.Tensor
    upscaled: torch.Tensor
    matching: Optional[torch.Tensor] = None
    p_value: Optional[torch.Tensor] = None
    detected: Optional[torch.Tensor] = None
    tampered: Optional[torch.Tensor] = None


class Fingerprinter:
    """A fingerprint encoder/decoder pair, ready to embed and detect."""

    def __init__(self, encoder, decoder, config, device="cpu"):
        self.device = torch.device(device)
        # Channels-last float32 only reorders the sums inside each convolution
        # (outputs agree to ~1e-6); on a CPU it runs the encoder 1.5-1.7x faster.
        self.encoder = encoder.eval().to(self.device, memory_format=torch.channels_last) if encoder else None
        self.decoder = decoder.eval().to(self.device, memory_format=torch.channels_last) if decoder else None
        self.config = config
        network = decoder or encoder
        self.resolution = network.resolution
        self.fingerprint_length = network.fingerprint_size
        self.encoder_batch = sub_batch_size(self.encoder, self.device) if encoder else None
        self.decoder_batch = sub_batch_size(self.decoder, self.device) if decoder else None
        # Subtracted from every residual the encoder makes (`fit_residual_mean`): None, or 1 c r r.
        self.residual_mean = None

    @classmethod
    def load(cls, model, device="cpu", decoder_only=False):
        """A shipped model's name, or a path to an `_encoder.pth` (its `_decoder.pth`
        beside it); `decoder_only` loads just the decoder (detection)."""
        encoder_path, decoder_path = model_pair_paths(model)
        return cls.from_paths(None if decoder_only else encoder_path, decoder_path, device)

    @classmethod
    def from_paths(cls, encoder_path, decoder_path, device="cpu", resolution=None):
        """The pair from its checkpoint files. `encoder_path` None: detection only;
        `decoder_path` None: embedding only, at `resolution` (else the config's)."""
        decoder, config = load_decoder(decoder_path) if decoder_path else (None, None)
        encoder = None
        if encoder_path is not None:
            resolution = (resolution or load_model_config(encoder_path).resolution
                          or (decoder.resolution if decoder else 0))
            if not resolution:
                raise UserError(f"{encoder_path}: has no recorded resolution; give its decoder")
            encoder, config = load_encoder(encoder_path, resolution)
        return cls(encoder, decoder, config, device)

    # --- the public API ---------------------------------------------------------------

    def embed(self, images, fingerprint, strength=1.0, differentiable=False, min_read_back=MIN_READ_BACK):
        """Fingerprinted copies of `images`, in the type and sizes given.

        images: a PIL image, a list of them, or a float tensor b c h w in [0, 1].
        fingerprint: a bit string of `fingerprint_length` bits, or a 0/1 tensor
            (L for every image, b L for one each).
        strength: scales the embedded residual (1 = as trained).
        differentiable: keep the autograd graph (for use inside a loss).
        min_read_back: images not at the model's size whose fingerprint reads
            back below this share of its bits are embedded again, up to 1.5x
            stronger (needs the decoder; 0: never).
        Returns a PIL image, a list of them (the 8-bit pixels the CLI saves),
        or a float tensor b c h w in [0, 1] (not quantised).
        """
        if self.encoder is None:
            raise UserError("this Fingerprinter was loaded for detection only")
        tensors, kind = as_tensors(images, self.device)
        bits = self.fingerprint_bits(fingerprint, len(tensors))
        with torch.enable_grad() if differentiable else torch.inference_mode():
            views = torch.stack([resizing.model_view(image.unsqueeze(0), self.resolution)[0] for image in tensors])
            if kind == "tensor":
                return torch.stack(list(self.marked_images(tensors, views, bits, strength, min_read_back)))
            marked = [pixels_to_pil(image) for image, _ in self.marked_pixels(tensors, views, bits, strength,
                                                                              min_read_back)]
        return marked[0] if kind == "pil" else marked

    def detect(self, images, fingerprint=None, fpr=1e-6, center_crop=False, search_crops=None,
               search_positions=False, search_rotations=False, search_orientations=False, search_mirror=False,
               search_borders=False, search_perspective=False):
        """Read the fingerprint of `images` (as for `embed`) into a Detection.

        Each whole image is resized to the model's size, as `embed` did;
        `center_crop=True` instead applies the CLIs' default preprocessing
        (shorter side resized to the model's size, then center-cropped).
        `search_crops=True` reads images that may have been cropped and
        resized back better (`read_bits`; None: as the pair's config says),
        `search_positions=True` crops taken anywhere and shifts too,
        `search_rotations=True` images turned by up to 30 degrees,
        `search_orientations=True` mirrored images and quarter turns,
        `search_mirror=True` samples of a GAN trained with mirror augmentation,
        `search_borders=True` images placed on a larger canvas (a border),
        `search_perspective=True` images warped in perspective.
        With `fingerprint` (as for `embed`), also scores it at `fpr`."""
        tensors, _ = as_tensors(images, self.device)
        with torch.inference_mode():
            views = [self.view_for_detection(image, center_crop) for image in tensors]
            aspects = torch.tensor([1.0 if center_crop else resizing.view_aspect(*image.shape[-2:])
                                    for image in tensors])
            canvases = [self.canvas_for_detection(image, center_crop) for image in tensors] if search_borders else None
            searches = crop_search.Searches(crops=search_crops, positions=search_positions, rotations=search_rotations,
                                            orientations=search_orientations, mirror=search_mirror,
                                            borders=search_borders, perspective=search_perspective)
            bits = self.read_bits(torch.stack(views), searches, aspects, canvases)
        upscaled = torch.tensor([resizing.is_smaller_than(image, self.resolution) for image in tensors])
        if fingerprint is None:
            return Detection(bits.cpu(), upscaled)
        return self.score(bits.cpu(), self.fingerprint_bits(fingerprint, len(bits)).cpu(), fpr, upscaled)

    # --- the pieces, shared with the command-line scripts ------------------------------

    def fingerprint_bits(self, fingerprint, count):
        """A bit string or 0/1 tensor (L or b L) as a float tensor (count L) on the device."""
        if isinstance(fingerprint, str):
            try:
                fingerprint = parse_bits(fingerprint)
            except ValueError as error:
                raise UserError(f"fingerprint: {error}") from None
        if not torch.is_tensor(fingerprint):
            fingerprint = torch.as_tensor(np.asarray(fingerprint))
        if fingerprint.dim() == 1:
            fingerprint = fingerprint.unsqueeze(0).expand(count, -1)
        if fingerprint.dim() != 2 or fingerprint.shape[1] != self.fingerprint_length:
            raise UserError(f"fingerprint: expected {self.fingerprint_length} bits (or b x {self.fingerprint_length}),"
                            f" got shape {tuple(fingerprint.shape)}")
        if fingerprint.shape[0] != count:
            raise UserError(f"fingerprint: {fingerprint.shape[0]} fingerprints for {count} images")
        if not bool(((fingerprint == 0) | (fingerprint == 1)).all()):
            raise UserError("fingerprint: values must be 0 or 1")
        return fingerprint.float().to(self.device)

    def marked_images(self, images, views, bits, strength=1.0, min_read_back=0.0):
        """Yield each image fingerprinted (float c h w), from an iterable of
        float images (c h w, any sizes), their model views (b c r r,
        `resizing.model_view`) and bits (b L): the encoder's output itself
        at the model's size, else the image plus its enlarged residual
        (`read_back_boosted` with `min_read_back`)."""
        for image, view, fingerprinted_view, image_bits in zip(images, views, self.encode_in_batches(views, bits),
                                                               bits):
            if image.shape == fingerprinted_view.shape and strength == 1:
                yield fingerprinted_view
            else:
                residual = (fingerprinted_view - view).unsqueeze(0)
                yield self.read_back_boosted(lambda s: resizing.add_residual(image.unsqueeze(0), residual, s)[0],
                                             lambda marked: marked, image_bits, strength, min_read_back)

    def marked_pixels(self, pixels, views, bits, strength=1.0, min_read_back=0.0):
        """`marked_images` for uint8 images (c h w each), yielding the 8-bit
        images a file stores (data.to_uint8 of marked_images, up to float
        rounding: one level, in ~1e-5 of the pixels), without a float copy
        of each image, each with the sum of its squared changes in 8-bit
        levels (evaluation.psnr_of_squared_levels makes it a PSNR)."""
        for image, view, fingerprinted_view, image_bits in zip(pixels, views, self.encode_in_batches(views, bits),
                                                               bits):
            image = image.to(view.device)
            if image.shape == fingerprinted_view.shape and strength == 1:
                marked = data.to_uint8(fingerprinted_view)
                yield marked, resizing.squared_change(marked, image)
            else:
                residual = fingerprinted_view - view
                yield self.read_back_boosted(lambda s: resizing.add_residual_to_pixels(image, residual, s),
                                             lambda marked: marked[0], image_bits, strength, min_read_back)

    def read_back_boosted(self, add, image_of, bits, strength, min_read_back):
        """`add(strength)`, an image marked with its residual at that strength,
        redone at each next READ_BACK_BOOSTS x `strength` while the image
        (`image_of` the result) reads back below `min_read_back` of `bits`
        as detection reads it; if none reaches it, the one that read best.
        Without a decoder, with 0, or at the model's own size (nothing is
        lost on the way there): `add(strength)`."""
        best = add(strength)
        if not min_read_back or self.decoder is None or image_of(best).shape[-2:] == (self.resolution,) * 2:
            return best
        best_accuracy = self.read_back_accuracy(image_of(best), bits)
        for boost in READ_BACK_BOOSTS:
            if best_accuracy >= min_read_back:
                break
            result = add(strength * boost)
            accuracy = self.read_back_accuracy(image_of(result), bits)
            if accuracy > best_accuracy:
                best, best_accuracy = result, accuracy
        return best

    def read_back_accuracy(self, image, bits):
        """The share of `bits` (L) that one marked image (c h w) reads back, whole image shrunk as in detection."""
        with torch.no_grad():
            view = resizing.model_view(image.detach().unsqueeze(0), self.resolution)
            return bit_accuracy(self.read_bits(view), bits.unsqueeze(0)).item()

    def encode_in_batches(self, views, bits):
        """`encode` over views of any count, BATCH_SIZE at a time."""
        return torch.cat([self.encode(views[start:start + BATCH_SIZE], bits[start:start + BATCH_SIZE])
                          for start in range(0, len(views), BATCH_SIZE)])

    def encode(self, views, bits):
        """The encoder on model-size images (b c r r in [0, 1]) and bits (b L):
        fingerprinted, less `residual_mean` when fitted, clamped."""
        views = views.contiguous(memory_format=torch.channels_last)
        marked = in_sub_batches(lambda v, b: encode(self.encoder, self.config, b, v), self.encoder_batch)(views, bits)
        return (marked if self.residual_mean is None else marked - self.residual_mean).clamp(0, 1)

    @property
    def is_content_keyed(self):
        """Whether the residual is signed by each image's own field (the v2+ pairs'
        `modulation`): its mean over images may be taken out (`fit_residual_mean`)."""
        return self.config.modulation in modulation.BANDS

    def fit_residual_mean(self, view_batches, fingerprint):
        """Take the mean residual of one fingerprint over a set of images out of
        every later embedding (`encode`), so that no average of those images
        holds the fingerprint: the mean of many fingerprinted images minus the
        mean of clean ones (the averaging attack) then estimates nothing. A
        content-keyed pair's own signal is signed by each image's field and
        averages out anyway (its bits read back as before), and so does that of
        a pair trained with its groups' means out (train.py --group_mean_out);
        any other additive pair's *is* that mean, so it is refused.
        `view_batches`: model-size float images (b c r r), batch by batch.
        Returns the mean's RMS."""
        if not (self.is_content_keyed or self.config.folder_mean_residual):
            raise UserError("taking out the mean residual needs a content-keyed pair (a modulation in its config) "
                            "or one trained with it out (train.py --group_mean_out)")
        self.residual_mean, total, count = None, 0, 0
        with torch.inference_mode():
            for views in view_batches:
                views = views.to(self.device)
                bits = self.fingerprint_bits(fingerprint, len(views))
                total = total + (self.encode_in_batches(views, bits) - views).sum(0, keepdim=True)
                count += len(views)
        if not count:
            raise UserError("no images to take the mean residual over")
        self.residual_mean = total / count
        return self.residual_mean.pow(2).mean().sqrt().item()

    def logits(self, views, field_gradient=False):
        """The decoder's logits (b L) for model-size images (b c r r in [0, 1]);
        differentiable (`field_gradient`: through the modulation's sign field too)."""
        views = views.contiguous(memory_format=torch.channels_last)
        decode_views = in_sub_batches(lambda v: decode(self.decoder, self.config, v, field_gradient),
                                      self.decoder_batch)
        return torch.cat([decode_views(views[start:start + BATCH_SIZE]) for start in range(0, len(views), BATCH_SIZE)])

    def read_bits(self, views, searches=crop_search.Searches(), aspects=None, canvases=None):
        """Decoded bits (b L uint8) of model-size images, through `searches`
        (a crop_search.Searches). `crops`: also read each as a centred crop
        zoomed back, and keep the most confident reading (crop_search.py; 9x
        the decoding, 18x at 32 px; content-keyed pairs only); None: as the
        pair's config says (on for a decoder trained for it). `positions`:
        also read each as a crop taken anywhere, or shifted (about 700
        decodes an image; any pair). `rotations`: also read each turned back
        by up to ROTATION_DEGREES (60 decodes an image; any pair), in the
        geometry of images whose width / height were `aspects` (b; default:
        square). `orientations`: also read each mirrored and by quarter
        turns, every other search in each (8x the decoding; any pair);
        `mirror`: as it is and mirrored, the more confident kept (2x; for
        samples of a GAN trained with mirror augmentation). `borders`: also
        read each as an image placed on a larger canvas, through every window
        it may sit in, and finely through every centred border (700-2,000
        decodes an image; any pair), the windows taken from `canvases` (each
        image's own pixels, `resizing.canvas_view`; default the views).
        `perspective`: also read each warped back in perspective, its corners
        found by gradient ascent on the reading's confidence (300 decodes,
        each with its gradient, an image; any pair)."""
        if searches.crops is None:
            searches = dataclasses.replace(searches, crops=self.config.search_crops)
        if searches.crops:
            self.check_can_search_crops()
        aspects = torch.ones(len(views)) if aspects is None else aspects

        def read(oriented_views, oriented_aspects, oriented_canvases):
            return self.searched_logits(oriented_views, oriented_aspects, searches, oriented_canvases)

        if searches.orientations:
            return bits_from_logits(crop_search.orientation_searched_logits(read, views, aspects, canvases))
        if searches.mirror:
            return bits_from_logits(crop_search.mirror_searched_logits(read, views, aspects, canvases))
        return bits_from_logits(read(views, aspects, canvases))

    def searched_logits(self, views, aspects, searches, canvases=None):
        """Logits (b L) of `views` through `searches` but the orientations (`read_bits`)."""
        logits = crop_search.searched_logits(self.logits, views) if searches.crops else self.logits(views)
        if searches.rotations:
            logits = crop_search.rotation_searched_logits(self.logits, views, aspects, logits)
        if searches.positions:
            logits = crop_search.position_searched_logits(self.logits, views, logits)
        if searches.borders:
            logits = crop_search.border_searched_logits(self.logits, views, logits, canvases, aspects)
        if searches.perspective:
            logits = crop_search.perspective_searched_logits(self.logits, views, logits)
        return logits

    def check_can_search_crops(self):
        if not (self.is_content_keyed or self.config.search_crops):
            raise UserError("search_crops: for content-keyed pairs (v2 and later) and decoders trained for it "
                            "(train.py --augment_crops_shrunk_back) only; another additive pair reads a zoomed "
                            "crop better as it is (docs/security.md section 19)")

    def view_for_detection(self, image, center_crop=False):
        """One image (c h w) as the decoder reads it: `resizing.model_view`, or
        with `center_crop` the shorter side resized then center-cropped."""
        if center_crop:
            image = data.resize_and_center_crop(data.to_float(image) if image.dtype == torch.uint8 else image,
                                                self.resolution)
        return resizing.model_view(image.unsqueeze(0), self.resolution)[0]

    def canvas_for_detection(self, image, center_crop=False):
        """One image (c h w) as the border search reads it: `resizing.canvas_view`,
        or with `center_crop` its centred square at its own pixels (within
        `resizing.canvas_side`)."""
        if center_crop:
            image = data.to_float(image) if image.dtype == torch.uint8 else image
            return data.resize_and_center_crop(image, resizing.canvas_side(min(image.shape[-2:]), self.resolution))
        return resizing.canvas_view(image.unsqueeze(0), self.resolution)[0]

    def score(self, bits, expected, fpr=1e-6, upscaled=None):
        """A Detection of decoded `bits` (b L) against `expected` (b L) at `fpr`."""
        matching = matching_bits(bits, expected)
        return Detection(bits, torch.zeros(len(bits), dtype=torch.bool) if upscaled is None else upscaled,
                         matching=matching, p_value=binomial_p_values(matching, self.fingerprint_length),
                         detected=matching >= min_matching_bits(self.fingerprint_length, fpr),
                         tampered=matching <= max_tampered_matching_bits(self.fingerprint_length, fpr))


# --- inputs and outputs ----------------------------------------------------------------

def as_tensors(images, device):
    """(images on `device`, the input's kind): a float b c h w tensor, or
    for PIL images a list of their uint8 pixels (c h w), read as the CLIs read files."""
    if isinstance(images, Image.Image):
        return [pil_to_tensor(images, device)], "pil"
    if isinstance(images, (list, tuple)):
        if not images:
            raise UserError("images: an empty list")
        if not all(isinstance(image, Image.Image) for image in images):
            raise UserError("images: a list must hold PIL images only (or give a b c h w tensor)")
        return [pil_to_tensor(image, device) for image in images], "pil_list"
    if torch.is_tensor(images):
        if not images.is_floating_point():
            raise UserError(f"images: a float tensor in [0, 1] is needed, got {images.dtype} "
                            "(divide uint8 pixels by 255)")
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(
                f"images: a b c h w tensor with 3 (RGB) channels is needed, got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise UserError("images: an empty batch")
        return images.to(device), "tensor"
    raise UserError(f"images: a PIL image, a list of them or a float tensor b c h w, got {type(images).__name__}")


def pil_to_tensor(image, device):
    return data.pil_to_uint8(data.to_rgb(image)).to(device)


def pixels_to_pil(pixels):
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


# --- running the networks on a CPU -----------------------------------------------------

def sub_batch_size(model, device):
    """Images per call of `model` on `device` (None: the whole batch; GPUs cache their memory)."""
    if device.type == "cuda":
        return None
    return max(1, ACTIVATION_BYTES // (4 * model.widest_activation()))


def in_sub_batches(function, size):
    """`function` over whole batches, called on `size` images at a time (all at once if None)."""
    def call(*tensors):
        if size is None or len(tensors[0]) <= size:
            return function(*tensors)
        return torch.cat([function(*(tensor[start:start + size] for tensor in tensors))
                          for start in range(0, len(tensors[0]), size)])
    return call
