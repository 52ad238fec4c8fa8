"""A1111's img2img colour correction with the libraries it uses: OpenCV's 8-bit Lab,
scikit-image's match_histograms and blendmodes 2022's luminosity blend (spec §7.7).

Usage: color_correction_reference.py DIR
Reads DIR/target.png and DIR/generated_<i>.png, writes DIR/corrected_<i>.png.
"""

import os
import sys

import cv2
import numpy as np
from blendmodes.blend import BlendType, blendLayers
from PIL import Image
from skimage import exposure


def main() -> None:
    folder = sys.argv[1]
    target = Image.open(os.path.join(folder, "target.png")).convert("RGB")
    correction = cv2.cvtColor(np.asarray(target), cv2.COLOR_RGB2LAB)
    i = 0
    while os.path.exists(os.path.join(folder, f"generated_{i}.png")):
        generated = Image.open(os.path.join(folder, f"generated_{i}.png")).convert("RGB")
        lab = cv2.cvtColor(np.asarray(generated), cv2.COLOR_RGB2LAB)
        matched = exposure.match_histograms(lab, correction, channel_axis=2)
        image = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8"))
        image = blendLayers(image, generated, BlendType.LUMINOSITY)
        image.convert("RGB").save(os.path.join(folder, f"corrected_{i}.png"))
        i += 1


if __name__ == "__main__":
    main()
