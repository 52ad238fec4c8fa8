"""OpenCV's 8-bit sRGB <-> CIE Lab conversions (cv2.cvtColor with COLOR_RGB2LAB and
COLOR_LAB2RGB, as A1111's colour correction calls them) on every 8-bit triple.

Usage: opencv_lab_reference.py DIR
Pixel i of the input is (i >> 16, (i >> 8) & 255, i & 255) for i < 2**24; writes
DIR/rgb_to_lab.bin (that pixel read as RGB, converted to Lab) and DIR/lab_to_rgb.bin (read as
Lab, converted to RGB), 3 bytes a pixel in the same order.
"""

import os
import sys

import cv2
import numpy as np


def main() -> None:
    folder = sys.argv[1]
    i = np.arange(1 << 24, dtype=np.uint32)
    triples = np.stack([i >> 16, (i >> 8) & 255, i & 255], axis=-1).astype(np.uint8)
    image = triples.reshape(4096, 4096, 3)
    cv2.cvtColor(image, cv2.COLOR_RGB2LAB).tofile(os.path.join(folder, "rgb_to_lab.bin"))
    cv2.cvtColor(image, cv2.COLOR_LAB2RGB).tofile(os.path.join(folder, "lab_to_rgb.bin"))


if __name__ == "__main__":
    main()
