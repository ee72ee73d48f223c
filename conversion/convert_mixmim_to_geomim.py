"""Convert a MixMIM checkpoint into the initial encoder of GeoMIM pretraining, as the original initialises it.

    python conversion/convert_mixmim_to_geomim.py --checkpoint mixmim_base_600ep.pth --output_dir geomim-init-mixmim
    python conversion/convert_mixmim_to_geomim.py --checkpoint swin_base_patch4_window7_224.pth \
        --output_dir geomim-init-imagenet

Writes a `GeoMIMModel` folder (unshifted windows, by default GeoMIM's (16, 16, 16, 8), relative-position tables resized
from MixMIM's (14, 14, 14, 7) or ImageNet Swin's 7 BEiT-style; absolute position embedding (1, C, 56, 56); fresh
identity output norms) and, for MixMIM, `decoder_init.safetensors`: MixMIM's decoder tensors under their MixMIM names
and shapes (`mask_token`, `decoder_embed.*`, `decoder_pos_embed` (1, 49, 512), `decoder_blocks.*`, `decoder_norm.*`,
`decoder_pred.*`), for `GeoMIMForPretraining` to take its decoder initialisation from. GeoMIM's loader used
`mask_token`, `decoder_pos_embed` (as (1, 512, 7, 7)), `decoder_blocks.0-7` and `decoder_norm`. The key mapping lives
in `geomim_hf.models.geomim.conversion_mixmim`.
"""

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from geomim_hf.checkpoint_conversion import CheckpointConversionError, load_checkpoint_file
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    upload_folder_to_hub,
)
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.models.geomim.conversion_mixmim import GEOMIM_WINDOWS, convert_mixmim_checkpoint

DECODER_FILE = "decoder_init.safetensors"

MODEL_CARD = """---
library_name: geomim_hf
tags:
- swin
- geomim_hf
pipeline_tag: image-feature-extraction
---

# GeoMIM pretraining initialisation from `{source}`

The {kind} encoder of `{source}` in GeoMIM's architecture (`GeoMIMModel`: windows {windows}, never shifted, absolute
position embedding on a 56 x 56 grid), converted with `conversion/convert_mixmim_to_geomim.py` (geomim_hf) the way
GeoMIM's pretraining initialises its encoder. It is a **starting point for GeoMIM pretraining**, not a GeoMIM
encoder, and no result is claimed for it.{decoder_note}

## Conversion record

- Source file: `{source}`
- Converter: `conversion/convert_mixmim_to_geomim.py`, strict load, report below

```text
{report}
```
"""

DECODER_NOTE = f"""

`{DECODER_FILE}` holds MixMIM's decoder tensors under their MixMIM names and shapes, for the pretraining model's
decoder initialisation. The original loaded `mask_token`, `decoder_pos_embed` (reshaped to (1, 512, 7, 7)),
`decoder_blocks.0-7` and `decoder_norm` from them."""


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

    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    GeoMIMImageProcessor.geomim_pretraining().save_pretrained(args.output_dir)
    if decoder:
        save_file({key: value.contiguous() for key, value in decoder.items()}, args.output_dir / DECODER_FILE,
                  metadata={"source": args.checkpoint.name, "names": "MixMIM (Sense-X/MixMIM models_mixmim.py)"})
    (args.output_dir / "README.md").write_text(MODEL_CARD.format(
        source=args.checkpoint.name, kind="MixMIM" if report.source_layout == "mixmim" else "ImageNet Swin",
        windows=tuple(model.config.window_size), decoder_note=DECODER_NOTE if decoder else "", report=report.format(),
    ))
    written = ["model.safetensors", "config.json", "preprocessor_config.json", "README.md"]
    print(f"Wrote {args.output_dir}: {', '.join(written + ([DECODER_FILE] if decoder else []))}")

    if args.push_to_hub:
        upload_folder_to_hub(args.push_to_hub, args.output_dir,
                             f"Add {args.checkpoint.name} converted for GeoMIM pretraining")
        print(f"Pushed {args.output_dir} to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
