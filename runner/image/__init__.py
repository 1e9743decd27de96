"""The sandbox images: built offline from locked Debian and Python packages, and verified."""

from runner.image.build import BuiltImage, build_image, build_user_image
from runner.image.verify import Verification, verify_image

__all__ = ["BuiltImage", "Verification", "build_image", "build_user_image", "verify_image"]
