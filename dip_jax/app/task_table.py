"""The paper's tasks (ORIGINAL.md), one `TaskConfig` each, added to `tasks.TASKS`.

Where a setting deliberately differs from the original notebook, a comment
says so.
"""

import dataclasses

import dip_jax as dj
from dip_jax import nets
from dip_jax.app.measurements import Blurring, Direct, Downsampling, Features, MaskFile, RandomMask, UnitActivation
from dip_jax.app.tasks import TASKS, DataSource, PaperNumber, PixelsConfig, QuickSettings, TaskConfig
from dip_jax.nets.resnet import ResNetConfig
from dip_jax.nets.unet import UNetConfig

_FIT = dj.FitConfig
_ASTRONAUT = (DataSource("data:astronaut_128.png"), DataSource("sample:astronaut"))

# Paper numbers (ORIGINAL.md, "Paper numbers"); dataset means, not per image.
_DENOISING_PAPER = (
    PaperNumber("DIP, 9 colour images, sigma 25, 1800 steps", 29.22),
    PaperNumber("DIP with output averaging", 30.43),
    PaperNumber("DIP, average of two runs", 31.00),
    PaperNumber("CBM3D", 31.42),
    PaperNumber("NLM", 30.26),
)
_SR4_PAPER = (
    PaperNumber("DIP Set5 (Y, 4 px border)", 29.90),
    PaperNumber("bicubic Set5", 28.43),
    PaperNumber("DIP Set14 (Y, 4 px border)", 27.00),
    PaperNumber("bicubic Set14", 26.05),
)
_INPAINTING50_PAPER = (
    PaperNumber("DIP, 11 grey images of Heide et al., 50% missing", 33.48),
    PaperNumber("convolutional sparse coding", 31.18),
)

_LIBRARY_SOURCES = (
    DataSource("dip:inpainting/library.png", mask="dip:inpainting/library_mask.png"),
    DataSource("data:astronaut_128.png", mask="data:mask_hole_128.png"),
    DataSource("sample:astronaut", mask="synthetic:hole"),
)
_LARGE_HOLE_QUICK = QuickSettings(fit_to_size="resize", num_steps=200)

def _add(config: TaskConfig) -> None:
    TASKS[config.name] = config


_add(TaskConfig(
    name="denoising",
    title="Denoising, synthetic Gaussian noise sigma 25",
    notebook="denoising.ipynb (F16)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=3000, learning_rate=0.01, reg_noise_std=1.0 / 30.0, ema_decay=0.99, backtrack=True),
    operator=Direct(noise_sigma=25.0),
    sources=(DataSource("dip:denoising/F16_GT.png"), DataSource("sample:astronaut")),
    paper=_DENOISING_PAPER,
    quick=QuickSettings(num_steps=300),
))
_add(dataclasses.replace(
    TASKS["denoising"],
    name="denoising_sigma50",
    title="Denoising, synthetic Gaussian noise sigma 50",
    fit=dataclasses.replace(TASKS["denoising"].fit, reg_noise_std=1.0 / 20.0),
    operator=Direct(noise_sigma=50.0),
    paper=(),
))
_add(dataclasses.replace(
    TASKS["denoising"],
    name="denoising_real",
    title="Denoising a real noisy photo (no ground truth)",
    # The original's "real" case is snail.jpg; any noisy photo can be given.
    sources=(DataSource("dip:denoising/snail.jpg"), DataSource("data:chelsea_64.png"), DataSource("sample:chelsea")),
    operator=Direct(),
    paper=(),
))
_add(TaskConfig(
    name="jpeg",
    title="JPEG artifact removal",
    notebook="denoising.ipynb (snail.jpg)",
    net=nets.preset("jpeg"),
    # The notebook runs snail.jpg through the denoising loop (averaging, backtracking).
    fit=_FIT(num_steps=2400, learning_rate=0.01, reg_noise_std=1.0 / 30.0, ema_decay=0.99, backtrack=True),
    operator=Direct(),
    sources=(
        DataSource("dip:denoising/snail.jpg"),
        # Stand-in: a clean photo compressed at quality 5, so a ground truth exists.
        DataSource("sample:coffee", degrade="jpeg"),
    ),
    notes="Stop early: with more steps the net fits the artifacts too.",
))
_add(TaskConfig(
    name="sr_x4",
    title="Super-resolution x4",
    notebook="super-resolution.ipynb (zebra)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=0.03),
    operator=Downsampling(factor=4, kernel_type="lanczos2"),
    sources=(DataSource("dip:sr/zebra_GT.png"), DataSource("sample:astronaut")),
    paper=_SR4_PAPER,
    quick=QuickSettings(num_steps=300),
))
_add(dataclasses.replace(
    TASKS["sr_x4"],
    name="sr_x8",
    title="Super-resolution x8",
    fit=_FIT(num_steps=4000, learning_rate=0.01, reg_noise_std=0.05),
    operator=Downsampling(factor=8, kernel_type="lanczos2"),
    paper=(),
))
# Joint denoising + super-resolution (not in the paper; its extension notes ask for it): the noisy
# observation is the low-resolution image. Steps, learning rate and input noise are the x4 / x8 tasks'
# (the same size of problem); from the denoising task it takes output averaging (ema 0.99) and
# backtracking, because with noise in the observation the late fit reproduces that noise and the
# running average of the outputs is the paper's remedy for it (the denoising notebook's exp_weight).
_add(dataclasses.replace(
    TASKS["sr_x4"],
    name="sr_x4_noisy",
    title="Super-resolution x4 of a noisy image (noise sigma 25 on the low-resolution observation)",
    notebook="(none: super-resolution.ipynb's net and steps + denoising.ipynb's averaging)",
    fit=dataclasses.replace(TASKS["sr_x4"].fit, ema_decay=0.99, backtrack=True),
    operator=Downsampling(factor=4, kernel_type="lanczos2", noise_sigma=25.0),
    paper=(),
    in_paper=False,
    # A 64 px crop leaves a 16 px observation: the narrow net fits its noise within ~60 steps and
    # never beats bicubic. At 128 px (32 px observed) the averaged output peaks near step 200
    # (measured on astronaut: 21.05 dB vs bicubic 20.18), so the quick run stops there.
    quick=QuickSettings(size=128, num_steps=200),
))
_add(dataclasses.replace(
    TASKS["sr_x4_noisy"],
    name="sr_x8_noisy",
    title="Super-resolution x8 of a noisy image (noise sigma 25 on the low-resolution observation)",
    fit=dataclasses.replace(TASKS["sr_x8"].fit, ema_decay=0.99, backtrack=True),
    operator=Downsampling(factor=8, kernel_type="lanczos2", noise_sigma=25.0),
))
_add(TaskConfig(
    name="text_inpainting",
    title="Text inpainting",
    notebook="inpainting.ipynb (kate)",
    net=nets.preset("text_inpainting"),
    fit=_FIT(num_steps=6001, learning_rate=0.01, reg_noise_std=0.03),
    operator=MaskFile(),
    sources=(
        DataSource("dip:inpainting/kate.png", mask="dip:inpainting/kate_mask.png"),
        DataSource("data:astronaut_128.png", mask="data:mask_text_128.png"),
        DataSource("sample:astronaut", mask="synthetic:text"),
    ),
    quick=QuickSettings(fit_to_size="resize"),
))
_add(TaskConfig(
    name="large_hole_vase",
    title="Large-hole inpainting (vase, meshgrid input)",
    notebook="inpainting.ipynb (vase)",
    net=nets.preset("large_hole"),
    fit=_FIT(num_steps=5001, learning_rate=0.01, reg_noise_std=0.03, input_type="meshgrid"),
    operator=MaskFile(),
    sources=(
        DataSource("dip:inpainting/vase.png", mask="dip:inpainting/vase_mask.png"),
        DataSource("data:astronaut_128.png", mask="data:mask_hole_128.png"),
        DataSource("sample:astronaut", mask="synthetic:hole"),
    ),
    quick=_LARGE_HOLE_QUICK,
))
_add(TaskConfig(
    name="large_hole_library",
    title="Large-hole inpainting (library, depth-6 skip net)",
    notebook="inpainting.ipynb (library, skip_depth6)",
    net=nets.preset("large_hole_depth6"),
    # The notebook sets param_noise=True, which has no effect in the original
    # code (it rebinds a local name); leaving it off computes what it computed.
    fit=_FIT(num_steps=3001, learning_rate=0.01, reg_noise_std=0.0),
    operator=MaskFile(),
    sources=_LIBRARY_SOURCES,
    quick=_LARGE_HOLE_QUICK,
))
_add(TaskConfig(
    name="large_hole_library_unet",
    title="Large-hole inpainting (library, UNet)",
    notebook="inpainting.ipynb (library, UNET)",
    net=UNetConfig(
        num_input_channels=1, num_output_channels=3, feature_scale=8, more_layers=1, concat_x=False,
        upsample_mode="deconv", pad="zero", norm_layer="InstanceNorm2d", need_sigmoid=True, need_bias=True,
    ),
    fit=_FIT(num_steps=3001, learning_rate=0.001, reg_noise_std=0.0),
    operator=MaskFile(),
    sources=_LIBRARY_SOURCES,
    quick=dataclasses.replace(
        _LARGE_HOLE_QUICK,
        learning_rate=0.01,
        net=UNetConfig(
            num_input_channels=1, num_output_channels=3, feature_scale=16, more_layers=0,
            upsample_mode="deconv", pad="zero", norm_layer="InstanceNorm2d",
        ),
    ),
))
_add(TaskConfig(
    name="large_hole_library_resnet",
    title="Large-hole inpainting (library, ResNet)",
    notebook="inpainting.ipynb (library, ResNet)",
    net=ResNetConfig(num_input_channels=1, num_output_channels=3, num_blocks=8, num_channels=32),
    fit=_FIT(num_steps=3001, learning_rate=0.001, reg_noise_std=0.0),
    operator=MaskFile(),
    sources=_LIBRARY_SOURCES,
    quick=dataclasses.replace(
        _LARGE_HOLE_QUICK,
        learning_rate=0.01,
        net=ResNetConfig(num_input_channels=1, num_output_channels=3, num_blocks=2, num_channels=8),
    ),
))
_add(TaskConfig(
    name="restoration_50",
    title="Restoration, 50% of pixels missing (greyscale)",
    notebook="restoration.ipynb (barbara)",
    net=nets.preset("default", num_output_channels=1),
    # The original also reflection-pads barbara by one pixel first (514 x 514); not done here.
    fit=_FIT(num_steps=11000, learning_rate=0.001, reg_noise_std=0.03, backtrack=True),
    operator=RandomMask(keep_fraction=0.5),
    sources=(
        DataSource("dip:restoration/barbara.png"),
        DataSource("data:camera_128.png"),
        DataSource("sample:camera:grey"),
    ),
    channels=1,
    paper=_INPAINTING50_PAPER,
    # lr 0.001 barely moves in 200 steps; the quick run uses the usual 0.01.
    quick=QuickSettings(learning_rate=0.01),
))
_add(TaskConfig(
    name="restoration_98",
    title="Restoration, 98% of pixels missing",
    notebook="restoration.ipynb (kate)",
    net=nets.preset("restoration_sparse"),
    fit=_FIT(num_steps=1000, learning_rate=0.01, reg_noise_std=0.0),
    operator=RandomMask(keep_fraction=0.02),
    sources=(DataSource("dip:restoration/kate.png"),) + _ASTRONAUT,
    # 2% of a 64 x 64 patch is ~80 pixels; the quick run keeps 20%.
    quick=QuickSettings(fit_to_size="resize", keep_fraction=0.2),
))
_add(TaskConfig(
    name="flash_no_flash",
    title="Flash / no-flash reconstruction",
    notebook="flash-no-flash.ipynb (cave01)",
    net=nets.preset("flash"),
    fit=_FIT(num_steps=601, learning_rate=0.1, reg_noise_std=0.0, input_type="image"),
    operator=Direct(),
    sources=(
        DataSource("dip:flash_no_flash/cave01_01_noflash.jpg", guide="dip:flash_no_flash/cave01_00_flash.jpg"),
        # Stand-in pair: the photo is the "flash" input; a dim, noisy copy is the "no-flash" target.
        DataSource("data:astronaut_128.png", guide="data:astronaut_128.png", degrade="low_light"),
        DataSource("sample:astronaut", guide="sample:astronaut", degrade="low_light"),
    ),
    quick=QuickSettings(fit_to_size="resize", num_steps=100, learning_rate=0.01),
))
_add(TaskConfig(
    name="feature_inversion",
    title="Feature inversion (AlexNet fc6)",
    notebook="feature_inversion.ipynb (building)",
    net=nets.preset("feature_inversion"),
    fit=_FIT(num_steps=3100, learning_rate=0.001, reg_noise_std=0.0),
    operator=Features(classifier="alexnet", layer="fc6", classifier_input=227, net_size=256),
    sources=(DataSource("dip:feature_inversion/building.jpg"),) + _ASTRONAUT,
    quick=QuickSettings(fit_to_size="resize", num_steps=60, learning_rate=0.01, chunk_size=30),
))
_add(TaskConfig(
    name="activation_maximization",
    title="Activation maximisation (AlexNet conv4, unit 2)",
    notebook="activation_maximization.ipynb",
    net=nets.preset("activation_maximization"),
    # param_noise=True in the notebook has no effect in the original code; off here.
    fit=_FIT(num_steps=3100, learning_rate=0.001, reg_noise_std=0.03),
    operator=UnitActivation(classifier="alexnet", layer="conv4", classifier_input=227, net_size=256, unit=2,
                            unit_mode="maximize"),
    quick=QuickSettings(num_steps=60, learning_rate=0.01, chunk_size=30),
))
_add(dataclasses.replace(
    TASKS["activation_maximization"],
    name="activation_maximization_fc8",
    title="Activation maximisation (AlexNet fc8, class 'black swan')",
    fit=dataclasses.replace(TASKS["activation_maximization"].fit, learning_rate=0.01),
    # The original's matcher drives an fc unit towards 300 (|300 - a|), not to +infinity.
    operator=dataclasses.replace(TASKS["activation_maximization"].operator, layer="fc8", unit=100, unit_mode="match"),
))
_SR_PRIOR_SOURCES = (DataSource("dip:sr/zebra_crop.png"), DataSource("sample:astronaut"))
_add(TaskConfig(
    name="sr_prior_none",
    title="SR x4 prior effect: no prior (optimise the pixels)",
    notebook="sr_prior_effect.ipynb (experiment 1)",
    net=PixelsConfig(3, 3),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=0.0),
    operator=Downsampling(factor=4),
    sources=_SR_PRIOR_SOURCES,
    quick=QuickSettings(num_steps=300, net=PixelsConfig(3, 3)),
))
_add(dataclasses.replace(
    TASKS["sr_prior_none"],
    name="sr_prior_tv",
    title="SR x4 prior effect: TV prior",
    notebook="sr_prior_effect.ipynb (experiment 2)",
    fit=dataclasses.replace(TASKS["sr_prior_none"].fit, tv_weight=1e-7),
))
_add(dataclasses.replace(
    TASKS["sr_prior_none"],
    name="sr_prior_deep",
    title="SR x4 prior effect: deep prior (skip net)",
    notebook="sr_prior_effect.ipynb (experiment 3)",
    net=nets.preset("default", num_input_channels=3),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=1.0 / 30.0),
    quick=QuickSettings(num_steps=300),
))
_add(TaskConfig(
    name="deblur",
    title="Deblurring (Gaussian blur; not in the original)",
    notebook="(none: added by dip_jax)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=3000, learning_rate=0.01, reg_noise_std=1.0 / 30.0),
    operator=Blurring(blur_sigma=2.0),
    sources=(DataSource("sample:astronaut"),),
    in_paper=False,
    quick=QuickSettings(num_steps=300),
))
