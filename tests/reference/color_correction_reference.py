"""A1111's img2img colour correction with the libraries it uses, called as
modules/processing.py (setup_color_correction, apply_color_correction) calls them: OpenCV's
8-bit Lab, scikit-image's match_histograms and blendmodes 2022's luminosity blend.

Usage: color_correction_reference.py DIR
Reads DIR/target_<i>.png (the init image) and DIR/generated_<i>.png for i = 0, 1, ... and
writes DIR/corrected_<i>.png.
"""

import os
import sys
import warnings

import cv2
import numpy as np
from blendmodes.blend import BlendType, blendLayers
from PIL import Image
from skimage import exposure


def setup_color_correction(image):
    return cv2.cvtColor(np.asarray(image.copy()), cv2.COLOR_RGB2LAB)


def apply_color_correction(correction, original_image):
    image = Image.fromarray(
        cv2.cvtColor(
            exposure.match_histograms(
                cv2.cvtColor(np.asarray(original_image), cv2.COLOR_RGB2LAB),
                correction,
                channel_axis=2,
            ),
            cv2.COLOR_LAB2RGB,
        ).astype("uint8")
    )
    image = blendLayers(image, original_image, BlendType.LUMINOSITY)
    return image.convert("RGB")


def main() -> None:
    folder = sys.argv[1]
    # A 0/0 in blendmodes' gamut clipping casts NaN to uint8; numpy warns, A1111 carries on.
    warnings.simplefilter("ignore", RuntimeWarning)
    i = 0
    while os.path.exists(os.path.join(folder, f"generated_{i}.png")):
        target = Image.open(os.path.join(folder, f"target_{i}.png")).convert("RGB")
        generated = Image.open(os.path.join(folder, f"generated_{i}.png")).convert("RGB")
        corrected = apply_color_correction(setup_color_correction(target), generated)
        corrected.save(os.path.join(folder, f"corrected_{i}.png"))
        i += 1


if __name__ == "__main__":
    main()
