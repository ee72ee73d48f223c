"""Convert a ViT checkpoint into the RGB encoder of Mask3D (`Mask3DModel`), to initialise Mask3D pretraining from it.

    python conversion/convert_vit_to_mask3d.py --source mae_pretrain_vit_base.pth --output_dir mae-vit-base-mask3d \
        --image_size 240 320
    python conversion/convert_vit_to_mask3d.py --source facebook/vit-mae-base --output_dir vit-mae-base-mask3d
    python conversion/convert_vit_to_mask3d.py --source google/vit-base-patch16-224 --output_dir vit-base-mask3d

`--source` is either a checkpoint file in timm's layout (timm ViTs, the original MAE release; `.pth`, `.bin` or
`.safetensors`, read with `weights_only=True`) or a transformers ViT / ViTMAE folder or Hub id (loaded with
`AutoModel.from_pretrained`). The key mapping lives in `geomim_hf.models.mask3d.conversion_mask3d`; loading is strict
and the report lists every converted and dropped key. `--image_size H W` resizes the position table once to another
grid (ScanNet's 240x320, say); without it the source's square size is kept and other sizes are interpolated on the fly.
The output folder gets `model.safetensors`, `config.json`, `preprocessor_config.json` and a model card. Then:

    accelerate launch examples/pretrain_mask3d.py --model_name_or_path mae-vit-base-mask3d --root SCANNET ...
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoImageProcessor, AutoModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from geomim_hf.checkpoint_conversion import load_checkpoint_file, unwrap_state_dict
from geomim_hf.data.scannet_rgbd import mask3d_image_processor
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    conversion_record,
    fill_template,
    save_conversion,
)
from geomim_hf.models.mask3d.conversion_mask3d import build_encoder, convert_timm_state_dict, convert_transformers_vit

MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "mask3d-vit-converted.md"
CONVERTER = f"conversion/{Path(__file__).name}"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="timm-layout checkpoint file, or transformers ViT / ViTMAE folder or Hub id")
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="resize the position table to this input size (default: keep the source's)")
    parser.add_argument("--num_attention_heads", type=int,
                        help="heads per layer of a timm-layout source (default: hidden size / 64)")
    parser.add_argument("--layer_norm_eps", type=float, default=1e-6,
                        help="layer norm epsilon of a timm-layout source (default: 1e-6, timm's and MAE's)")
    add_conversion_output_arguments(parser, "the converted encoder")
    args = parser.parse_args(argv)
    check_conversion_arguments(parser, args)
    return args


def convert(args: argparse.Namespace):
    """The converted encoder, its report, and the image normalisation of the source."""
    source = Path(args.source)
    if source.is_file():
        state_dict = unwrap_state_dict(load_checkpoint_file(source))
        config, converted, report = convert_timm_state_dict(state_dict, args.num_attention_heads, args.layer_norm_eps)
        normalisation = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        report.notes.append("normalisation: ImageNet mean / std assumed (a timm file does not record it)")
    else:
        model = AutoModel.from_pretrained(args.source)
        config, converted, report = convert_transformers_vit(model)
        try:
            processor = AutoImageProcessor.from_pretrained(args.source)
            normalisation = processor.image_mean, processor.image_std
        except OSError:
            normalisation = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
            report.notes.append("normalisation: the source has no image processor; ImageNet mean / std assumed")
    encoder = build_encoder(config, converted, report, tuple(args.image_size) if args.image_size else None)
    return encoder, report, normalisation


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        encoder, report, (image_mean, image_std) = convert(args)
    except (ValueError, FileNotFoundError) as error:  # CheckpointConversionError and bad sizes are ValueErrors
        sys.exit(f"error: cannot convert {args.source}: {error}")
    print(report.format())

    card = fill_template(MODEL_CARD.read_text(), {
        "source": args.source, "conversion_record": conversion_record(args.source, CONVERTER, report)})
    save_conversion(args.output_dir, encoder, card,
                    image_processor=mask3d_image_processor(encoder.config.image_size, image_mean, image_std),
                    push_to_hub=args.push_to_hub, commit_message=f"Add {args.source} converted to Mask3DModel")


if __name__ == "__main__":
    main()
