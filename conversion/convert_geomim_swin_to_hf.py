"""Convert a GeoMIM Swin checkpoint, or an ImageNet Swin one, into a `GeoMIMModel` folder ready for the Hub.

    python conversion/convert_geomim_swin_to_hf.py --checkpoint geomim_base.pth --output_dir geomim-swin-base
    python conversion/convert_geomim_swin_to_hf.py --checkpoint swin_base_patch4_window7_224.pth \
        --output_dir swin-base-imagenet

Accepted sources: GeoMIM pretraining checkpoints, the backbone of finetuned BEVDet detectors, mmdet Swin backbones,
and official / timm Swin checkpoints (converted with shifted windows). The key mapping lives in
`geomim_hf.models.geomim.conversion_geomim`; this script loads the file (`weights_only=True`), prints the conversion
report, and writes `model.safetensors`, `config.json`, `preprocessor_config.json` and a model card filled from
`model_cards/` (the released size's, or `geomim-swin-converted.md`).
"""

import argparse
import sys
from pathlib import Path

from geomim_hf.checkpoint_conversion import CheckpointConversionError, ConversionReport, load_checkpoint_file
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    conversion_record,
    fill_template,
    save_conversion,
)
from geomim_hf.models.geomim import GeoMIMConfig
from geomim_hf.models.geomim.conversion_geomim import convert_checkpoint, released_swin_size

MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
CONVERTER = f"conversion/{Path(__file__).name}"

# The released GeoMIM encoders (geomim.md section 1.1); both have depths (2, 2, 18, 2) and windows (16, 16, 16, 8).
GEOMIM_VARIANTS = {
    "base": {"embed_dim": 128, "num_heads": [4, 8, 16, 32]},
    "large": {"embed_dim": 192, "num_heads": [6, 12, 24, 48]},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint file (.pth, .pt, .bin or .safetensors)"
    )
    add_conversion_output_arguments(parser, "the converted model")
    parser.add_argument(
        "--variant",
        choices=("base", "large", "auto", "custom"),
        default="auto",
        help="GeoMIM size the checkpoint must be; 'auto' reads it from the weights and refuses a checkpoint with the "
        "width of a released Swin but other depths or heads (a damaged file?); 'custom' converts any architecture",
    )
    parser.add_argument(
        "--shift_windows",
        choices=("auto", "on", "off"),
        default="auto",
        help="whether odd blocks shift their windows; 'auto': off for mmdet-layout (GeoMIM), on for Swin layout",
    )
    args = parser.parse_args(argv)
    check_conversion_arguments(parser, args)
    return args


def geomim_variant(config: GeoMIMConfig, report: ConversionReport) -> str | None:
    """The released GeoMIM encoder the converted architecture is, if any."""
    for name, widths in GEOMIM_VARIANTS.items():
        if (
            report.source_layout == "mmdet"
            and config.embed_dim == widths["embed_dim"]
            and config.num_heads == widths["num_heads"]
            and config.depths == [2, 2, 18, 2]
            and config.window_size == [16, 16, 16, 8]
            and not config.shift_windows
        ):
            return name
    return None


def describe_architecture(config: GeoMIMConfig, report: ConversionReport) -> str:
    return (
        f"{report.source_layout} layout, embed_dim {config.embed_dim}, depths {config.depths}, "
        f"heads {config.num_heads}, windows {config.window_size}, shift_windows {config.shift_windows}"
    )


def render_model_card(variant: str | None, record: str) -> str:
    """The card of the released GeoMIM `variant` (or the generic one for other encoders) with `record` filled in."""
    name = "geomim-swin-converted.md" if variant is None else f"geomim-swin-{variant}.md"
    return fill_template((MODEL_CARDS_DIR / name).read_text(), {"conversion_record": record})


def image_processor(report: ConversionReport) -> GeoMIMImageProcessor:
    """The input pipeline the weights were trained with: BEVDet finetuning (which feeds BGR, see
    ``GeoMIMImageProcessor``) for the backbone of a finetuned BEVDet checkpoint, true RGB otherwise."""
    if report.prefix == "img_backbone.":
        return GeoMIMImageProcessor.bevdet_finetuning()
    return GeoMIMImageProcessor.geomim_pretraining()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shift_windows = {"auto": None, "on": True, "off": False}[args.shift_windows]
    try:
        model, report = convert_checkpoint(load_checkpoint_file(args.checkpoint), shift_windows=shift_windows)
    except CheckpointConversionError as error:
        sys.exit(f"error: cannot convert {args.checkpoint}: {error}")
    print(report.format())

    variant = geomim_variant(model.config, report)
    try:
        swin_size = released_swin_size(model.config, allow_custom=args.variant == "custom")
    except CheckpointConversionError as error:
        sys.exit(f"error: cannot convert {args.checkpoint}: {error} (pass --variant custom)")
    if swin_size is None:
        print(f"Custom architecture, not a released Swin size: {describe_architecture(model.config, report)}")
    if args.variant in GEOMIM_VARIANTS and variant != args.variant:
        sys.exit(
            f"error: --variant {args.variant} expects GeoMIM Swin-{args.variant.capitalize()} "
            f"({GEOMIM_VARIANTS[args.variant]}), the checkpoint is {describe_architecture(model.config, report)}"
        )

    architecture = f"Architecture read from the weights: {describe_architecture(model.config, report)}"
    record = conversion_record(args.checkpoint, CONVERTER, report, details=[architecture])
    print(f"Model card: {variant or 'generic'}")
    save_conversion(args.output_dir, model, render_model_card(variant, record),
                    image_processor=image_processor(report), push_to_hub=args.push_to_hub,
                    commit_message=f"Add {args.checkpoint.name} converted to GeoMIMModel")


if __name__ == "__main__":
    main()
