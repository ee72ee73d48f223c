"""Convert a released BEVDet / BEVDet4D detector checkpoint into a `GeoMIMForBEVDetection` folder ready for the Hub.

    python conversion/convert_bevdet_to_hf.py --checkpoint bevdet-swinb-4d-256x704-cbgs-geomim_ema.pth \
        --output_dir geomim-bevdet4d-swin-base [--preset bevdet4d-swinb-256x704] [--push_to_hub ID]

Accepted: the finetuned detectors of GeoMIM's `bevdet/` (GeoMIM Swin-B, `...-cbgs-geomim`) and its ImageNet baseline
(`...-cbgs`, whose Swin shifts windows and has no absolute position embedding), as training checkpoints
(`{meta, state_dict, optimizer}`) or EMA files (`{epoch, state_dict, updates}`). Widths, the temporal setting and the
task layout are read from the weights; the grid, depth bins, image size and BEVDet's index truncation from `--preset`.
The key mapping lives in `geomim_hf.models.bevdet.conversion_bevdet`; this script loads the file
(`weights_only=True`), prints the conversion report and writes `model.safetensors`, `config.json`,
`preprocessor_config.json` (BEVDet's BGR input pipeline) and a model card.
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
from geomim_hf.models.bev.configuration_bev import BEV_PRESETS
from geomim_hf.models.bevdet import GeoMIMBEVDetectionConfig
from geomim_hf.models.bevdet.conversion_bevdet import convert_detector_checkpoint, preset_geometry
from geomim_hf.models.geomim.conversion_geomim import released_swin_size

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "geomim-bevdet4d-swin-base.md"
CONVERTER = f"conversion/{Path(__file__).name}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (.pth, .pt or .safetensors)")
    add_conversion_output_arguments(parser, "the converted model")
    parser.add_argument("--preset", choices=sorted(BEV_PRESETS), default="bevdet4d-swinb-256x704",
                        help="what the weights cannot tell: grid, depth bins, image size, index truncation")
    parser.add_argument("--custom_encoder", action="store_true",
                        help="accept an encoder with the width of a released Swin but other depths or heads")
    args = parser.parse_args(argv)
    check_conversion_arguments(parser, args)
    return args


def describe(config: GeoMIMBEVDetectionConfig) -> dict[str, str]:
    """The card's architecture fields."""
    trunk = config.bev_config
    encoder = trunk.encoder_config
    kind = "GeoMIM Swin (windows never shifted, absolute position embedding)" if not encoder.shift_windows else \
        "Swin with shifted windows, no absolute position embedding (ImageNet initialisation)"
    grid = trunk.grid
    return {
        "detector": "BEVDet4D, one previous key frame aligned in the view transform" if trunk.num_previous_frames
        else "BEVDet, single frame",
        "encoder": f"{kind}: embed {encoder.embed_dim}, depths {encoder.depths}, heads {encoder.num_heads}, "
                   f"windows {encoder.window_size}",
        "image_neck_channels": trunk.image_neck_channels,
        "depth_bins": grid.num_depth_bins,
        "context_channels": trunk.context_channels,
        "grid": f"{grid.num_x} x {grid.num_y} (cells of {grid.x[2]} m)",
        "bev_encoder": f"{trunk.bev_encoder_blocks} blocks, channels {trunk.bev_encoder_channels}",
        "bev_neck_channels": trunk.bev_neck_channels,
        "tasks": f"{len(config.tasks)} task(s) {config.tasks}",
        "image_size": f"{trunk.image_size[0]} x {trunk.image_size[1]}",
    }


def render_card(config: GeoMIMBEVDetectionConfig, report: ConversionReport, checkpoint: Path,
                preset: str, repo_id: str) -> str:
    geomim = not config.bev_config.encoder_config.shift_windows
    title = "GeoMIM Swin-B BEVDet4D (256 x 704)" if geomim else "ImageNet Swin-B BEVDet4D baseline (256 x 704)"
    description = (
        "The BEVDet4D detector that GeoMIM finetunes from its pretrained Swin-B encoder "
        "(`bevdet-swinb-4d-256x704-cbgs-geomim`), the headline detector of the GeoMIM paper."
        if geomim else
        "The ImageNet-initialised baseline of GeoMIM's detection table (`bevdet-swinb-4d-256x704-cbgs`): the same "
        "detector with a standard shifted-window Swin-B."
    )
    record = conversion_record(checkpoint, CONVERTER, report,
                               details=[f"Preset: `{preset}` ({preset_geometry(preset)})"])
    return fill_template(CARD_TEMPLATE.read_text(), {"title": title, "description": description, "repo_id": repo_id,
                                                     "conversion_record": record, **describe(config)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def check_encoder(encoder_config) -> None:
        size = released_swin_size(encoder_config, allow_custom=args.custom_encoder)
        print(f"Encoder: Swin-{size.capitalize()}" if size else "Encoder: custom architecture (not a released size)")

    try:
        model, report = convert_detector_checkpoint(load_checkpoint_file(args.checkpoint), args.preset, check_encoder)
    except CheckpointConversionError as error:
        sys.exit(f"error: cannot convert {args.checkpoint}: {error}")
    print(report.format())

    card = render_card(model.config, report, args.checkpoint, args.preset, args.push_to_hub or str(args.output_dir))
    processor = GeoMIMImageProcessor.bevdet_finetuning(
        size=dict(zip(("height", "width"), model.config.bev_config.image_size)))
    save_conversion(args.output_dir, model, card, image_processor=processor, push_to_hub=args.push_to_hub,
                    commit_message=f"Add {args.checkpoint.name} converted to GeoMIMForBEVDetection")


if __name__ == "__main__":
    main()
