"""Convert a MixMIM checkpoint into the initial encoder of GeoMIM pretraining, as the original initialises it.

    python conversion/convert_mixmim_to_geomim.py --checkpoint mixmim_base_600ep.pth --output_dir geomim-init-mixmim
    python conversion/convert_mixmim_to_geomim.py --checkpoint swin_base_patch4_window7_224.pth \
        --output_dir geomim-init-imagenet

Writes a `GeoMIMModel` folder (unshifted windows, by default GeoMIM's (16, 16, 16, 8), relative-position tables resized
from MixMIM's (14, 14, 14, 7) or ImageNet Swin's 7 BEiT-style; absolute position embedding (1, C, 56, 56); fresh
identity output norms) and, for MixMIM, `decoder_init.safetensors`: MixMIM's decoder tensors under their MixMIM names
and shapes (`mask_token`, `decoder_embed.*`, `decoder_pos_embed` (1, 49, 512), `decoder_blocks.*`, `decoder_norm.*`,
`decoder_pred.*`), from which `load_mixmim_decoder` initialises the decoder of `GeoMIMForPretraining` as GeoMIM's
loader did: `mask_token`, `decoder_pos_embed` (as (1, 512, 7, 7)), `decoder_blocks.0-7` and `decoder_norm`. The key
mapping lives in `geomim_hf.models.geomim.conversion_mixmim`; the card is `model_cards/geomim-mixmim-init.md`.
"""

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from geomim_hf.checkpoint_conversion import CheckpointConversionError, load_checkpoint_file
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    conversion_record,
    fill_template,
    save_conversion,
)
from geomim_hf.models.geomim.conversion_mixmim import GEOMIM_WINDOWS, MIXMIM_DECODER_FILE, convert_mixmim_checkpoint

MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "geomim-mixmim-init.md"
CONVERTER = f"conversion/{Path(__file__).name}"
# The card's decoder section, for a MixMIM checkpoint and for an ImageNet Swin one.
DECODER_NOTES = {
    "mixmim": f"`{MIXMIM_DECODER_FILE}` holds MixMIM's decoder tensors under their MixMIM names and shapes, for the\n"
              "pretraining model's decoder initialisation (`examples/pretrain_geomim.py --encoder_name_or_path <this\n"
              "folder>` takes it). As the original, GeoMIM takes `mask_token`, `decoder_pos_embed` (reshaped to\n"
              "(1, 512, 7, 7)), `decoder_blocks.0-7` and `decoder_norm` from it.",
    "swin": "An ImageNet Swin has no pretraining decoder: GeoMIM's decoder starts from its own initialisation.",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="MixMIM ({'model': ...}) or ImageNet Swin (official / timm) checkpoint file")
    add_conversion_output_arguments(parser, "the converted encoder")
    parser.add_argument("--window_size", type=int, nargs="+", default=list(GEOMIM_WINDOWS), metavar="W",
                        help="windows per stage of the GeoMIM encoder (default 16 16 16 8)")
    args = parser.parse_args(argv)
    check_conversion_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model, decoder, report = convert_mixmim_checkpoint(load_checkpoint_file(args.checkpoint), args.window_size)
    except CheckpointConversionError as error:
        sys.exit(f"error: cannot convert {args.checkpoint}: {error}")
    print(report.format())

    card = fill_template(MODEL_CARD.read_text(), {
        "source": args.checkpoint.name, "kind": "MixMIM" if decoder else "ImageNet Swin",
        "windows": tuple(model.config.window_size), "decoder": DECODER_NOTES[report.source_layout],
        "conversion_record": conversion_record(args.checkpoint, CONVERTER, report),
    })

    def write_decoder(path: Path) -> None:
        save_file({key: value.contiguous() for key, value in decoder.items()}, path,
                  metadata={"source": args.checkpoint.name, "names": "MixMIM (Sense-X/MixMIM models_mixmim.py)"})

    save_conversion(args.output_dir, model, card, image_processor=GeoMIMImageProcessor.geomim_pretraining(),
                    extra_files={MIXMIM_DECODER_FILE: write_decoder} if decoder else None,
                    push_to_hub=args.push_to_hub,
                    commit_message=f"Add {args.checkpoint.name} converted for GeoMIM pretraining")


if __name__ == "__main__":
    main()
