"""Render the scene sprites from the Noto Color Emoji font (run once; the PNGs are committed).

    apt-get install fonts-noto-color-emoji
    python -m captioner.training.scenes.make_sprites            # rewrites training/scenes/sprites/*.png

Generating a scenes dataset needs only Pillow and the committed PNGs; this script is
here so that anyone can check where the sprites came from or re-render them at another
size. Noto Color Emoji is a bitmap (CBDT) font whose strikes exist only at 109 px, so
each glyph is drawn at that size with its embedded colours, cropped to its visible
pixels, centred on a transparent square and downscaled (premultiplied alpha, Lanczos).
The font is licensed under the SIL Open Font License 1.1 (``sprites/LICENSE-OFL.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .catalogue import CATEGORIES, Category

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SPRITES_DIR = Path(__file__).resolve().parent / "sprites"
FONT_SIZE = 109  # the only size Noto Color Emoji's bitmaps come in
SPRITE_SIZE = 96  # px; scenes draw sprites at 50-70 px, so they are always downscaled


def render_sprite(font: ImageFont.FreeTypeFont, category: Category, size: int = SPRITE_SIZE) -> Image.Image:
    """One emoji as a ``size`` x ``size`` RGBA image, the glyph touching two opposite edges."""
    canvas = Image.new("RGBA", (FONT_SIZE * 3 // 2, FONT_SIZE * 3 // 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), category.emoji, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise SystemExit(f"the font has no glyph for {category.name} (U+{category.codepoint})")
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--font", default=DEFAULT_FONT, help=f"path of NotoColorEmoji.ttf (default: {DEFAULT_FONT})")
    parser.add_argument("--out", type=Path, default=SPRITES_DIR, help="folder for the PNGs (default: the package's)")
    parser.add_argument("--size", type=int, default=SPRITE_SIZE, help=f"sprite side in pixels (default: {SPRITE_SIZE})")
    args = parser.parse_args(argv)
    if not Path(args.font).is_file():
        raise SystemExit(
            f"{args.font}: font not found; install the Debian package fonts-noto-color-emoji or pass --font PATH"
        )
    font = ImageFont.truetype(args.font, FONT_SIZE)
    args.out.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        render_sprite(font, category, args.size).save(args.out / category.sprite_file, optimize=True)
    print(f"wrote {len(CATEGORIES)} sprites of {args.size}x{args.size} px to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
